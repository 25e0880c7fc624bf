/** threadSetScheduling (native/src/sched.cc) on a real thread: a child process's, so the runner keeps its own. */
import { execFileSync } from 'node:child_process';
import { REPO_ROOT } from '../hypervisor/helpers';
import { native } from '../../src/native';

describe('threadSetScheduling', () => {
  it('moves a thread to SCHED_IDLE and back (back needs CAP_SYS_NICE), keeping its nice value', () => {
    const out = execFileSync(process.execPath, ['-e', `
      const fs = require('node:fs');
      const os = require('node:os');
      const { native } = require('./dist/native');
      const policy = () => Number(fs.readFileSync('/proc/self/stat', 'latin1').split(') ')[1].split(' ')[38]);
      os.setPriority(0, 5);
      native.threadSetScheduling(process.pid, 'idle');
      const idle = [policy(), os.getPriority(0)];
      let back;
      try { native.threadSetScheduling(process.pid, 'normal'); back = [policy(), os.getPriority(0)]; } catch (err) { back = err.code; }
      console.log(JSON.stringify({ idle, back }));`], { cwd: REPO_ROOT }).toString();
    const root = process.getuid?.() === 0;
    expect(JSON.parse(out)).toEqual({ idle: [5, 5], back: root ? [0, 5] : 'EPERM' });
  });

  it('names what was wrong', () => {
    expect(() => native.threadSetScheduling(0x7fffffff, 'idle')).toThrow(expect.objectContaining({ code: 'ESRCH', syscall: 'sched_getattr' }));
    expect(() => native.threadSetScheduling(process.pid, 'fifo' as 'idle')).toThrow(/sched_setattr.*policy must be 'normal' or 'idle'/);
    expect(() => native.threadSetScheduling(-1, 'idle')).toThrow(/sched_setattr.*tid/);
  });
});

/**
 * The hypervisor's thread priorities (src/hypervisor/thread-priority.ts, host-threads.ts),
 * in a child process each, so nice values and policies stay out of the test runner.
 * test/migration/local-migration.test.ts checks them on real hypervisors.
 */
import { execFileSync, spawn } from 'node:child_process';
import { REPO_ROOT, threadsOf } from '../hypervisor/helpers';

const root = process.getuid?.() === 0;

function run(script: string): string {
  return execFileSync(process.execPath, ['-e', script], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
}

/** Runs `script` (an async function's body) in a child that then waits; `look` sees it from outside. */
async function whileRunning<T>(script: string, look: (pid: number) => T): Promise<T> {
  const body = `(async () => { ${script}; console.log('up'); setTimeout(() => {}, 20000); })()`;
  const child = spawn(process.execPath, ['-e', body], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('up')) resolve(); });
      child.on('exit', (code) => reject(new Error(`child exited (${code}) before it was up`)));
    });
    return look(child.pid as number);
  } finally {
    child.kill('SIGKILL');
  }
}

describe('main thread priority through a migration', () => {
  it('goes background (19), switchover (-10) and back to normal (the start value) with CAP_SYS_NICE; stays put without', () => {
    const out = run(`
      const os = require('node:os');
      const { setThreadPriority } = require('./dist/hypervisor/thread-priority');
      const seen = [os.getPriority(0)];
      for (const level of ['background', 'switchover', 'normal', 'background', 'normal']) { setThreadPriority(level); seen.push(os.getPriority(0)); }
      console.log(JSON.stringify(seen));`);
    expect(JSON.parse(out)).toEqual(root ? [0, 19, -10, 0, 19, 0] : [0, 0, 0, 0, 0, 0]);
  });

  it('never lowers a higher start priority for the switchover, and comes back to it', () => {
    if (!root) {
      console.warn('skipped: needs CAP_SYS_NICE to start at nice -15');
      return;
    }
    const out = run(`
      const os = require('node:os');
      os.setPriority(0, -15);
      const { setThreadPriority } = require('./dist/hypervisor/thread-priority');
      const seen = [];
      for (const level of ['switchover', 'background', 'normal']) { setThreadPriority(level); seen.push(os.getPriority(0)); }
      console.log(JSON.stringify(seen));`);
    expect(JSON.parse(out)).toEqual([-15, 19, -15]);
  });

  it('changes the calling thread only', async () => {
    if (!root) {
      console.warn('skipped: needs CAP_SYS_NICE');
      return;
    }
    const { pid, threads } = await whileRunning(`require('./dist/hypervisor/thread-priority').setThreadPriority('background')`, (pid) => ({ pid, threads: threadsOf(pid) }));
    expect(threads.find((t) => t.tid === pid)?.nice).toBe(19);
    expect(threads.filter((t) => t.tid !== pid).map((t) => t.nice)).toEqual(threads.slice(1).map(() => 0));
  });
});

describe("Node's helper threads", () => {
  it('run SCHED_IDLE after idleNodeHelperThreads; the main thread and threads started later keep SCHED_OTHER', async () => {
    const { pid, threads } = await whileRunning(`
      require('./dist/hypervisor/host-threads').idleNodeHelperThreads();
      // libuv's pool starts on first use, after the call: it keeps the defaults.
      await require('node:fs').promises.stat('/')`, (pid) => ({ pid, threads: threadsOf(pid) }));
    const main = threads.find((t) => t.tid === pid);
    expect(main?.policy).toBe('other');
    // Node 20 starts V8's platform workers before any script runs.
    expect(threads.filter((t) => t.policy === 'idle').length).toBeGreaterThanOrEqual(4);
    expect(threads.filter((t) => t.tid !== pid && t.policy === 'other').length).toBeGreaterThanOrEqual(1);
  });
});

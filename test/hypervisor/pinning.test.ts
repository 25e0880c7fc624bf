/**
 * libvirt's <cputune> in baton-hv (--vcpupin, --emulatorpin) on real processes: each vCPU
 * thread runs where its vcpupin says, an unpinned one on every online CPU, and every other
 * thread (those Node started before us and those started later) where emulatorpin says;
 * query-cpus-fast names the vCPU threads as QEMU's does; a pin to a CPU the host does not
 * have is refused before anything starts.
 */
import { formatCpuset, parseCpuset } from '../../src/util/cpuset';
import fs from 'node:fs';
import { HvTracker, maybe, threadsOf } from './helpers';

const hv = new HvTracker();
afterEach(() => hv.cleanup());

const online = parseCpuset(fs.readFileSync('/sys/devices/system/cpu/online', 'utf8').trim());
const first = online[0];
const last = online[online.length - 1];

maybe('vCPU threads and the emulator threads run on the CPUs pinned for them', async () => {
  const proc = hv.start('pin', {
    vcpus: 2, append: 'counter interval_ms=20', extraArgs: ['--vcpupin', `1:${first}`, '--emulatorpin', String(last)],
  });
  const qmp = await hv.qmp(proc);
  await proc.waitForTick(3);
  const cpus = (await qmp.execute('query-cpus-fast')) as { 'cpu-index': number; 'thread-id': number; target: string }[];
  expect(cpus.map((c) => [c['cpu-index'], c.target])).toEqual([[0, 'x86_64'], [1, 'x86_64']]);

  const threads = threadsOf(proc.pid);
  const byTid = (tid: number) => threads.find((t) => t.tid === tid);
  // vCPU 0 has no vcpupin: not confined to the emulator's CPU it was started from.
  expect(byTid(cpus[0]['thread-id'])).toMatchObject({ comm: 'CPU 0/KVM', cpus: formatCpuset(online) });
  expect(byTid(cpus[1]['thread-id'])).toMatchObject({ comm: 'CPU 1/KVM', cpus: String(first) });
  const emulator = threads.filter((t) => !t.comm.endsWith('/KVM') && !t.comm.startsWith('kvm-'));
  // The main thread, V8's helpers (started before the pin) and libuv's pool (after it).
  expect(emulator.length).toBeGreaterThanOrEqual(5);
  expect(emulator.filter((t) => t.cpus !== String(last))).toEqual([]);
  // The guest runs on: its ticks go on after the look.
  const ticks = await proc.waitForTick(6);
  expect(ticks.length).toBeGreaterThanOrEqual(6);
});

maybe('pins to CPUs this host does not have online, or to a vCPU it lacks, are refused with the reason', async () => {
  const refusals = [
    { args: ['--vcpupin', '0:1023'], code: 1, says: new RegExp(`vcpupin for vCPU 0 names host CPU 1023, but this host's online CPUs are ${formatCpuset(online)}`) },
    { args: ['--emulatorpin', `0,1023`], code: 1, says: /emulatorpin names host CPU 1023/ },
    { args: ['--vcpupin', '1:0'], code: 2, says: /cpuPinning\.vcpus\[0\]\.vcpu is 1; the machine has vCPUs 0-0/ },
    { args: ['--vcpupin', '0:0', '--vcpupin', '0:0'], code: 2, says: /pins vCPU 0 a second time/ },
    { args: ['--vcpupin', '0'], code: 2, says: /--vcpupin expects VCPU:CPUSET \(e\.g\. 0:1\), got "0"/ },
    { args: ['--emulatorpin', '3-1'], code: 2, says: /--emulatorpin '3-1': range '3-1' runs backwards/ },
  ];
  const problems: string[] = [];
  for (const r of refusals) {
    const proc = hv.start('pin-refused', { append: 'counter', extraArgs: r.args });
    const exit = await proc.waitExit(15_000);
    if (exit.code !== r.code || !r.says.test(proc.stderr)) problems.push(`${r.args.join(' ')}: exit ${JSON.stringify(exit)}, stderr:\n${proc.stderr}`);
  }
  expect(problems).toEqual([]);
});

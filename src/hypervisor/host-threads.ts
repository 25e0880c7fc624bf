/** Where and how baton-hv's threads run on the host: scheduling class and CPU pinning. */
import fs from 'node:fs';
import { native } from '../native';
import { formatCpuset, parseCpuset } from '../util/cpuset';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { CpuPinning } from './machine-config';

const log = loggerFor('baton-hv');

/** This process's threads (the main thread's tid is the pid). */
function ownThreads(): number[] {
  return fs.readdirSync('/proc/self/task').map(Number);
}

/**
 * Node's own helper threads (V8's compiler and garbage-collector workers) run SCHED_IDLE in
 * baton-hv. Left at the defaults, a helper compiling the freshly hot packet path held a core
 * for up to 10 ms at a time (kernel trace, idle echo guest), and the main thread (every device
 * model), woken on that core, waited behind it. SCHED_IDLE threads use idle CPU time and give
 * way at once to any other thread that wakes up, ours or another process's.
 *
 * Called first thing, while Node's are the only other threads: the vCPU threads come later
 * with the defaults, and so does libuv's pool (started on first use; we wait on its work).
 */
export function idleNodeHelperThreads(): void {
  for (const tid of ownThreads()) {
    if (tid === process.pid) continue;
    try {
      native.threadSetScheduling(tid, 'idle');
    } catch (err) {
      // A thread that ended meanwhile: nothing to do.
      log.debug(`thread ${tid} keeps its scheduling: ${(err as Error).message}`);
    }
  }
}

/** The host's online CPUs. */
export function onlineCpus(): number[] {
  return parseCpuset(fs.readFileSync('/sys/devices/system/cpu/online', 'utf8').trim());
}

/** Refuses pinning to CPUs this host does not have online, before anything is built. */
export function checkPinningAgainstHost(pinning: CpuPinning | undefined, online = onlineCpus()): void {
  const check = (what: string, cpus: number[]) => {
    const missing = cpus.filter((c) => !online.includes(c));
    if (missing.length > 0) {
      throw new BatonError('ECONFIG', `${what} names host CPU ${formatCpuset(missing)}, but this host's online CPUs are ${formatCpuset(online)}; pin to those`);
    }
  };
  for (const pin of pinning?.vcpus ?? []) check(`vcpupin for vCPU ${pin.vcpu}`, pin.cpus);
  if (pinning?.emulator) check('emulatorpin', pinning.emulator);
}

/**
 * libvirt's emulatorpin: every thread of this process so far. Called before the vCPU threads
 * exist; the threads started later (libuv's pool, the vCPUs) inherit the main thread's set,
 * and each vCPU then gets its own (`vcpuThreadCpus`).
 */
export function pinEmulatorThreads(cpus: number[]): void {
  for (const tid of ownThreads()) {
    try {
      native.threadSetAffinity(tid, cpus);
    } catch (err) {
      if (tid === process.pid) throw new BatonError('EPIN', `cannot pin baton-hv to CPUs ${formatCpuset(cpus)}: ${(err as Error).message}`);
      log.debug(`thread ${tid} keeps its CPUs: ${(err as Error).message}`);
    }
  }
}

/**
 * The CPUs a vCPU thread may use: its vcpupin, else every online CPU when the emulator is
 * pinned (it inherited the emulator's set; libvirt leaves unpinned vCPUs on all CPUs), else
 * undefined (left as it is).
 */
export function vcpuThreadCpus(pinning: CpuPinning | undefined, vcpu: number): number[] | undefined {
  const own = pinning?.vcpus.find((p) => p.vcpu === vcpu);
  if (own) return own.cpus;
  return pinning?.emulator ? onlineCpus() : undefined;
}

/**
 * The hypervisor's main thread (every device model, the migration channel) and its priority
 * through a migration. On a small, busy host each wake-up of that thread waits for a core, and
 * a migration adds work at both ends of the pause:
 *   background  nice 19: a destination preparing (from its start in incoming mode until it
 *               signals ready: VM creation, RAM mapping, restore rehearsal) gives way at once
 *               to the source, whose main thread still serves the running guest's NICs; and
 *               a source once its state is sent (its wake-up on 'done' and its bookkeeping
 *               preempted the destination's first NIC work, traced with both on one core);
 *   switchover  nice -10 (or the start value if higher): the pause on both sides (the
 *               destination from its ready signal, so the state finds it at this level), and a
 *               settling time after the destination resumes;
 *   normal      the nice value the process started with.
 * Only the calling thread changes (Linux's nice is per thread): vCPU threads keep the value
 * they were created with, so a destination's vCPUs are not left in the background. Coming
 * back from 19 needs CAP_SYS_NICE, as does -10: without it, nothing changes at all.
 */
import os from 'node:os';
import { loggerFor } from '../util/logger';

const log = loggerFor('baton-hv');

export type ThreadPriority = 'background' | 'normal' | 'switchover';

const BACKGROUND_NICE = 19;
const SWITCHOVER_NICE = -10;

let startNice: number | undefined;
let allowed: boolean | undefined;

/** Whether this process may raise its priority (tried once, and undone at once). */
function mayChange(): boolean {
  if (allowed === undefined) {
    try {
      startNice = os.getPriority(0);
      os.setPriority(0, Math.min(startNice, SWITCHOVER_NICE));
      os.setPriority(0, startNice);
      allowed = true;
    } catch (err) {
      allowed = false;
      log.debug(`main thread priority stays as it is (no CAP_SYS_NICE?): ${(err as Error).message}`);
    }
  }
  return allowed;
}

/** Sets the calling thread's priority to `level` (see above); a no-op without CAP_SYS_NICE. */
export function setThreadPriority(level: ThreadPriority): void {
  if (!mayChange()) return;
  const normal = startNice as number;
  const nice = level === 'background' ? Math.max(normal, BACKGROUND_NICE) : level === 'switchover' ? Math.min(normal, SWITCHOVER_NICE) : normal;
  try {
    os.setPriority(0, nice);
  } catch (err) {
    log.debug(`setting the main thread's priority to ${level} (nice ${nice}): ${(err as Error).message}`);
  }
}

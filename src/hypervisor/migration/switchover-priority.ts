/**
 * The switchover's few milliseconds run on whatever core the host scheduler gives them; on a
 * small, busy host the hypervisor's main thread (every device model, the migration channel)
 * waits behind other processes at each wake-up. For the switchover, and a settling period
 * after the destination resumes, that thread runs at a raised priority (nice -10), then goes
 * back. Only the calling thread changes (Linux setpriority on a tid): vCPU threads keep
 * theirs. Without CAP_SYS_NICE the boost is skipped.
 */
import os from 'node:os';
import { loggerFor } from '../../util/logger';

const log = loggerFor('migration');
const BOOSTED_NICE = -10;

/** Raises the calling thread's priority; the returned function puts it back (idempotent). */
export function boostThisThread(): () => void {
  let before: number;
  try {
    before = os.getPriority(0);
    if (before <= BOOSTED_NICE) return () => undefined;
    os.setPriority(0, BOOSTED_NICE);
  } catch (err) {
    log.debug(`switchover priority boost skipped: ${(err as Error).message}`);
    return () => undefined;
  }
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    try { os.setPriority(0, before); } catch { /* lowering is always allowed */ }
  };
}

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
import fs from 'node:fs';
import { native } from '../native';
import { loggerFor } from '../util/logger';

const log = loggerFor('baton-hv');

export function idleNodeHelperThreads(): void {
  const main = process.pid;
  for (const name of fs.readdirSync('/proc/self/task')) {
    const tid = Number(name);
    if (tid === main) continue;
    try {
      native.threadSetScheduling(tid, 'idle');
    } catch (err) {
      // A thread that ended meanwhile: nothing to do.
      log.debug(`thread ${tid} keeps its scheduling: ${(err as Error).message}`);
    }
  }
}

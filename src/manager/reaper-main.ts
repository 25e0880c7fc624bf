/**
 * The reaper: run by a hypervisor's keeper shell (supervisor.ts) right after baton-hv exits,
 * as `node reaper-main.js DOMAIN PID STATUS [START_TIME]`. Under the store lock, if the runtime
 * record still names that process (pid, and start time when the keeper could read it) as
 * running or paused — nobody recorded the stop yet: not destroy, not shutdown, not a failed
 * start, and no migration moved the domain to another process — it records shut off — reason
 * `shutdown` for exit status 0, `crashed` otherwise — and removes the dead hypervisor's
 * sockets and machine config. The source of a migration quits after the record already names
 * the destination (migrate.ts holds the lock through the switch), so its exit is not an end.
 */
import { batonPaths } from '../domain/paths';
import { withDirectoryLock } from '../domain/lock';
import { markShutoff, readRuntimeRecord } from '../domain/runtime';
import { removeHypervisorFiles } from './supervisor';

/** Generous: the reaper runs in the background and may wait behind a slow start or destroy. */
const REAPER_LOCK_TIMEOUT_MS = 180_000;

export async function reap(name: string, pid: number, status: number, startTime?: string): Promise<string> {
  const paths = batonPaths();
  return withDirectoryLock(paths.stateDir, () => {
    const record = readRuntimeRecord(paths, name);
    if (!record || record.state === 'shut off') return `baton-hv pid ${pid} exited with status ${status}; its stop was already recorded`;
    if (record.pid !== pid || (startTime && record.pidStartTime && record.pidStartTime !== startTime)) {
      // A migration's source after the switch, or a destination that never took over.
      return `baton-hv pid ${pid} exited with status ${status}; domain '${name}' is recorded as baton-hv pid ${record.pid}, not this process: nothing to record`;
    }
    const reason = status === 0 ? 'shutdown' : 'crashed';
    markShutoff(paths, name, record.uuid, reason);
    removeHypervisorFiles(paths, name);
    return `baton-hv pid ${pid} exited with status ${status}${status > 128 ? ` (signal ${status - 128})` : ''}; domain '${name}' is shut off (${reason})`;
  }, REAPER_LOCK_TIMEOUT_MS);
}

if (require.main === module) {
  const [name, pidText, statusText, startTime] = process.argv.slice(2);
  reap(name, Number(pidText), Number(statusText), startTime || undefined).then(
    (line) => process.stdout.write(`${new Date().toISOString()} reaper: ${line}\n`),
    (err: Error) => {
      process.stderr.write(`${new Date().toISOString()} reaper: recording the end of baton-hv pid ${pidText} of domain '${name}' failed: ${err.message}\n`);
      process.exitCode = 1;
    },
  );
}

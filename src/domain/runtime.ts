import fs from 'node:fs';
import { BatonError } from '../util/errors';
import { removeFileDurably, writeFileAtomic } from './atomic';
import { DomainErrorCode } from './errors';
import { BatonPaths, domainFiles } from './paths';

/**
 * Runtime state of a domain: `<run dir>/<name>.json`, written by whoever starts, pauses or
 * stops its hypervisor (the lifecycle commands / manager), read by everyone. Whether the
 * hypervisor is really alive is never taken from the file alone: `domainState` checks the
 * pid and its start time (so a reused pid is not mistaken for our hypervisor).
 */

/** virsh's state names. */
export type DomainStateName = 'running' | 'paused' | 'shut off';
/** virsh's reasons (virDomainRunningReason etc.), the subset Baton produces. */
export type RunningReason = 'unknown' | 'booted' | 'migrated' | 'restored' | 'unpaused';
export type PausedReason = 'unknown' | 'user' | 'migrating' | 'starting up';
export type ShutoffReason = 'unknown' | 'shutdown' | 'destroyed' | 'crashed' | 'migrated' | 'failed';

/** A domain whose hypervisor process was started (it may have died since). */
export interface ActiveRecord {
  name: string;
  uuid: string;
  /** virsh-style domain id, unique among active domains (see `nextDomainId`). */
  id: number;
  state: 'running' | 'paused';
  reason: RunningReason | PausedReason;
  /** The hypervisor process. */
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks after boot): tells our process from a reused pid. */
  pidStartTime: string;
  monitorSocket: string;
  consoleSocket: string;
  /** Build id of the hypervisor running this domain (live upgrade compares it). */
  hypervisorBuild: string;
  /** ISO 8601. */
  startedAt: string;
  /** When the domain last moved to a new hypervisor process (`vm migrate`), ISO 8601. */
  migratedAt?: string;
  /** How many times it moved since it started. */
  migrations?: number;
}

/** A domain that stopped; kept so `domstate --reason` can say why. */
export interface ShutoffRecord {
  name: string;
  uuid: string;
  state: 'shut off';
  reason: ShutoffReason;
  stoppedAt: string;
}

export type RuntimeRecord = ActiveRecord | ShutoffRecord;

export interface DomainStatus {
  state: DomainStateName;
  reason: string;
  /** Present while the domain is running or paused. */
  id?: number;
  /** The live record, while the domain is running or paused. */
  active?: ActiveRecord;
}

interface ProcStat {
  /** Single-letter state (R, S, D, Z, X, ...). */
  state: string;
  startTime: string;
}

/** Reads /proc/<pid>/stat; undefined when there is no such process. */
export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may contain spaces or ')': split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
  return { state: fields[0], startTime: fields[19] };
}

/** Start time of a process as recorded in ActiveRecord.pidStartTime. */
export function processStartTime(pid: number): string | undefined {
  return readProcStat(pid)?.startTime;
}

/** True when `pid` exists, is not a zombie, and is the same process that started at `startTime`. */
export function isProcessAlive(pid: number, startTime: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else; the start-time check below decides.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = readProcStat(pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return false;
  return stat.startTime === startTime;
}

export function readRuntimeRecord(paths: BatonPaths, name: string): RuntimeRecord | undefined {
  const file = domainFiles(paths, name).runtime;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new BatonError(DomainErrorCode.StoreIo, `cannot read runtime state ${file}: ${(err as Error).message}`, { file });
  }
  try {
    return JSON.parse(text) as RuntimeRecord;
  } catch (err) {
    throw new BatonError(DomainErrorCode.StoreIo, `runtime state ${file} is not valid JSON (${(err as Error).message}); remove it if no hypervisor runs for '${name}'`, { file });
  }
}

/** Writes the runtime record atomically (creating the run directory). */
export function writeRuntimeRecord(paths: BatonPaths, record: RuntimeRecord): void {
  fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o755 });
  writeFileAtomic(domainFiles(paths, record.name).runtime, JSON.stringify(record, null, 2) + '\n');
}

/** Records that a domain stopped, and why. */
export function markShutoff(paths: BatonPaths, name: string, uuid: string, reason: ShutoffReason): void {
  writeRuntimeRecord(paths, { name, uuid, state: 'shut off', reason, stoppedAt: new Date().toISOString() });
}

export function removeRuntimeRecord(paths: BatonPaths, name: string): void {
  removeFileDurably(domainFiles(paths, name).runtime);
}

/**
 * The domain's state as virsh would report it. A record that says running/paused whose
 * hypervisor is gone (dead pid, zombie, or pid reused by another process) is reported as
 * `shut off (crashed)`; this read does not rewrite the record (readers take no lock).
 */
export function domainState(paths: BatonPaths, name: string): DomainStatus {
  const record = readRuntimeRecord(paths, name);
  if (!record) return { state: 'shut off', reason: 'unknown' };
  if (record.state === 'shut off') return { state: 'shut off', reason: record.reason };
  if (!isProcessAlive(record.pid, record.pidStartTime)) return { state: 'shut off', reason: 'crashed' };
  return { state: record.state, reason: record.reason, id: record.id, active: record };
}

/** The smallest id above every active domain's; call while holding the store lock. */
export function nextDomainId(paths: BatonPaths): number {
  let highest = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(paths.runDir).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
  } catch {
    return 1;
  }
  for (const file of names) {
    const status = domainState(paths, file.slice(0, -'.json'.length));
    if (status.id !== undefined) highest = Math.max(highest, status.id);
  }
  return highest + 1;
}

import fs from 'node:fs';
import path from 'node:path';
import type { QmpClient } from '../hypervisor/monitor/qmp-client';
import { DomainErrorCode } from '../domain/errors';
import { BatonPaths, domainFiles } from '../domain/paths';
import {
  ActiveRecord,
  domainState,
  DomainStatus,
  markShutoff,
  nextDomainId,
  readRuntimeRecord,
  writeRuntimeRecord,
} from '../domain/runtime';
import { checkBootFiles, DomainStore } from '../domain/store';
import { Domain } from '../domain/types';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { ManagerErrorCode } from './errors';
import { checkUnmanagedTaps, configureHostSide } from './host-network';
import { hypervisorBuildId } from './hypervisor-build';
import { machineConfigFromDomain, nicIds } from './machine-config-from-domain';
import {
  appendDomainLog,
  connectMonitor,
  removeHypervisorFiles,
  signalHypervisor,
  spawnHypervisor,
  waitForExit,
  waitForMonitor,
} from './supervisor';

const log = loggerFor('lifecycle');

/**
 * Domain lifecycle with virsh's names and habits: start, destroy, shutdown, suspend,
 * resume, and the live state. Every change of the runtime record happens under the store
 * lock; the only long wait outside it is shutdown's wait for the guest to power off.
 */

/** Time for baton-hv to come up to its monitor on a loaded 2-core host (node start, KVM set-up). */
export const DEFAULT_START_TIMEOUT_MS = 30_000;
/** virsh users expect a graceful shutdown to be given a minute. */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 60_000;
/** destroy's escalation: QMP quit, then SIGTERM, then SIGKILL, each given this long to work. */
const QUIT_GRACE_MS = 3000;
const SIGTERM_GRACE_MS = 3000;
const SIGKILL_GRACE_MS = 5000;
/** A running hypervisor answers query-status at once; past this we report the recorded state. */
const STATUS_QUERY_TIMEOUT_MS = 2000;

function notActive(domain: Domain): BatonError {
  return new BatonError(ManagerErrorCode.NotActive, `domain '${domain.name}' is not running; start it with 'baton vm start ${domain.name}'`, { domain: domain.name });
}

/** The live record, or EDOMAINNOTACTIVE. */
function activeRecord(paths: BatonPaths, domain: Domain): ActiveRecord {
  const status = domainState(paths, domain.name);
  if (!status.active) throw notActive(domain);
  return status.active;
}

/** A TAP may be held by one running domain only, even if a definition slipped past `define`'s check. */
function checkTapsFree(store: DomainStore, domain: Domain): void {
  const mine = new Set(domain.interfaces.map((nic) => nic.tapName));
  for (const other of store.list()) {
    if (other.name === domain.name || !domainState(store.paths, other.name).active) continue;
    const shared = other.interfaces.find((nic) => mine.has(nic.tapName));
    if (shared) {
      throw new BatonError(DomainErrorCode.TapInUse, `TAP device '${shared.tapName}' is in use by running domain '${other.name}'; stop it or give '${domain.name}' another <target dev>`, {
        tap: shared.tapName,
        domain: other.name,
      });
    }
  }
}

/**
 * Prepares the serial log for a new boot: `<log dir>/<name>.serial.log` starts empty (so a
 * reader waiting for a line never sees the previous boot's). A domain with its own
 * `<log file>` gets that file (truncated unless append='on') and a link to it in the log dir.
 */
function prepareSerialLog(paths: BatonPaths, domain: Domain): void {
  const inLogDir = domainFiles(paths, domain.name).serialLog;
  fs.mkdirSync(paths.logDir, { recursive: true, mode: 0o755 });
  fs.rmSync(inLogDir, { force: true });
  const own = domain.serial?.log;
  if (!own) {
    fs.writeFileSync(inLogDir, '', { mode: 0o600 });
    return;
  }
  fs.mkdirSync(path.dirname(own.file), { recursive: true });
  if (!own.append) fs.writeFileSync(own.file, '', { mode: 0o600 });
  if (path.resolve(own.file) !== inLogDir) fs.symlinkSync(own.file, inLogDir);
}

/** Stops a hypervisor: QMP quit, then SIGTERM, then SIGKILL (by pid, checked against its start time). */
async function stopHypervisor(name: string, target: { pid: number; pidStartTime: string; monitorSocket: string }): Promise<'quit' | 'SIGTERM' | 'SIGKILL'> {
  let client: QmpClient | undefined;
  try {
    client = await connectMonitor(target.monitorSocket, name, QUIT_GRACE_MS);
    await client.execute('quit', undefined, { timeoutMs: QUIT_GRACE_MS });
  } catch (err) {
    // A hung or half-dead hypervisor is exactly what destroy is for: go on to signals.
    log.info(`quit over QMP did not work for ${name}: ${(err as Error).message}`);
  } finally {
    client?.close();
  }
  if (await waitForExit(target.pid, target.pidStartTime, QUIT_GRACE_MS)) return 'quit';
  signalHypervisor(target.pid, target.pidStartTime, 'SIGTERM');
  if (await waitForExit(target.pid, target.pidStartTime, SIGTERM_GRACE_MS)) return 'SIGTERM';
  signalHypervisor(target.pid, target.pidStartTime, 'SIGKILL');
  if (await waitForExit(target.pid, target.pidStartTime, SIGKILL_GRACE_MS)) return 'SIGKILL';
  throw new BatonError(ManagerErrorCode.StopFailed, `baton-hv of domain '${name}' (pid ${target.pid}) survived SIGKILL for ${SIGKILL_GRACE_MS} ms (stuck in the kernel?); look at /proc/${target.pid}/stack`, { domain: name, pid: target.pid });
}

interface NicInfo {
  id: string;
  ifname: string;
  waitingForFds: boolean;
}

/** Once baton-hv holds every TAP open, sets up each TAP's host side (netns, address, up). */
async function setUpHostNetwork(client: QmpClient, domain: Domain): Promise<void> {
  if (domain.interfaces.length === 0) return;
  const nics = await client.execute<NicInfo[]>('x-query-nics');
  domain.interfaces.forEach((nic, index) => {
    const info = nics.find((n) => n.id === nicIds(index).device);
    if (!info || info.ifname !== nic.tapName || info.waitingForFds) {
      throw new BatonError(ManagerErrorCode.StartFailed, `baton-hv did not attach TAP '${nic.tapName}' to ${nicIds(index).device} of domain '${domain.name}' (it reports ${JSON.stringify(info ?? null)})`, { domain: domain.name, tap: nic.tapName });
    }
    configureHostSide(nic);
  });
}

export interface StartOptions {
  /** Leave the vCPUs stopped (virsh start --paused). */
  paused?: boolean;
  startTimeoutMs?: number;
}

export interface StartResult {
  name: string;
  uuid: string;
  id: number;
  state: 'running' | 'paused';
  pid: number;
  hypervisorBuild: string;
  monitorSocket: string;
  consoleSocket?: string;
  serialLog: string;
  log: string;
  /** From the start request to a hypervisor that answers and runs, host side ready. */
  startupMs: number;
}

/**
 * `vm start`: like libvirt, the hypervisor starts with its vCPUs stopped; once its monitor
 * answers and the host side of its TAPs is set up, `cont` lets the guest run (unless
 * `paused`). Any failure stops the hypervisor again and records shut off (failed).
 */
export async function startDomain(store: DomainStore, nameOrUuid: string, options: StartOptions = {}): Promise<StartResult> {
  const begun = Date.now();
  const paths = store.paths;
  return store.withLock(async () => {
    const domain = store.get(nameOrUuid);
    if (domainState(paths, domain.name).active) {
      throw new BatonError(DomainErrorCode.DomainActive, `Domain '${domain.name}' is already active`, { domain: domain.name });
    }
    checkBootFiles(domain);
    checkTapsFree(store, domain);
    checkUnmanagedTaps(domain.interfaces);
    const config = machineConfigFromDomain(domain, paths, { startPaused: true });
    const files = domainFiles(paths, domain.name);
    removeHypervisorFiles(paths, domain.name);
    prepareSerialLog(paths, domain);

    const id = nextDomainId(paths);
    const hypervisorBuild = hypervisorBuildId();
    appendDomainLog(paths, domain.name, `starting domain '${domain.name}' (uuid ${domain.uuid}, id ${id}) with baton-hv build ${hypervisorBuild}`);
    const hv = await spawnHypervisor(paths, config);
    const record: ActiveRecord = {
      name: domain.name,
      uuid: domain.uuid,
      id,
      state: 'paused',
      reason: 'starting up',
      pid: hv.pid,
      pidStartTime: hv.pidStartTime,
      monitorSocket: files.monitorSocket,
      consoleSocket: files.consoleSocket,
      hypervisorBuild,
      startedAt: new Date().toISOString(),
    };
    // Recorded before anything can fail, so a CLI killed mid-start leaves a findable hypervisor.
    writeRuntimeRecord(paths, record);

    let client: QmpClient | undefined;
    try {
      client = await waitForMonitor(paths, domain.name, hv, options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
      await setUpHostNetwork(client, domain);
      if (!options.paused) await client.execute('cont');
    } catch (err) {
      client?.close();
      client = undefined;
      await stopHypervisor(domain.name, record).catch((stopErr: Error) => log.warn(stopErr.message));
      markShutoff(paths, domain.name, domain.uuid, 'failed');
      removeHypervisorFiles(paths, domain.name);
      appendDomainLog(paths, domain.name, `start failed: ${(err as Error).message}`);
      throw err;
    } finally {
      client?.close();
    }
    record.state = options.paused ? 'paused' : 'running';
    record.reason = options.paused ? 'user' : 'booted';
    writeRuntimeRecord(paths, record);
    const startupMs = Date.now() - begun;
    appendDomainLog(paths, domain.name, `domain '${domain.name}' ${record.state} (baton-hv pid ${hv.pid}, ${startupMs} ms)`);
    return {
      name: domain.name,
      uuid: domain.uuid,
      id,
      state: record.state,
      pid: hv.pid,
      hypervisorBuild,
      monitorSocket: files.monitorSocket,
      ...(domain.serial ? { consoleSocket: files.consoleSocket } : {}),
      serialLog: files.serialLog,
      log: files.log,
      startupMs,
    };
  });
}

export interface DestroyResult {
  name: string;
  uuid: string;
  /** How the hypervisor ended: QMP quit, or the signal it took. */
  stoppedBy: 'quit' | 'SIGTERM' | 'SIGKILL';
}

/** `vm destroy`: stops the hypervisor at once (the guest gets no say), records shut off (destroyed). */
export async function destroyDomain(store: DomainStore, nameOrUuid: string): Promise<DestroyResult> {
  const paths = store.paths;
  return store.withLock(async () => {
    const domain = store.get(nameOrUuid);
    const record = activeRecord(paths, domain);
    const stoppedBy = await stopHypervisor(domain.name, record);
    markShutoff(paths, domain.name, domain.uuid, 'destroyed');
    removeHypervisorFiles(paths, domain.name);
    appendDomainLog(paths, domain.name, `domain '${domain.name}' destroyed (baton-hv pid ${record.pid} ended by ${stoppedBy})`);
    return { name: domain.name, uuid: domain.uuid, stoppedBy };
  });
}

export interface ShutdownOptions {
  /** How long to wait for the guest to power off; 0 = ask and return at once (plain virsh shutdown). */
  timeoutMs?: number;
  /** When the wait runs out, destroy the domain instead of failing. */
  force?: boolean;
}

export interface ShutdownResult {
  name: string;
  uuid: string;
  /** shutdown: the guest powered off; requested: asked, not waited for; destroyed: timed out and --force. */
  outcome: 'shutdown' | 'requested' | 'destroyed';
  /** Whether the hypervisor reported the guest's power-off (QMP SHUTDOWN with guest=true). */
  guestShutdownEvent: boolean;
  waitedMs: number;
}

/**
 * `vm shutdown`: presses the ACPI power button (QMP system_powerdown) and waits for the
 * guest to power off and its hypervisor to exit. When `timeoutMs` runs out the domain is left
 * running and ESHUTDOWNTIMEOUT says so (virsh never destroys on its own), unless `force`
 * asks for a destroy. A paused guest cannot see the button: refused.
 */
export async function shutdownDomain(store: DomainStore, nameOrUuid: string, options: ShutdownOptions = {}): Promise<ShutdownResult> {
  const paths = store.paths;
  const timeoutMs = options.timeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
  const domain = store.get(nameOrUuid);
  const record = activeRecord(paths, domain);
  const live = await liveDomainState(paths, domain.name);
  if (live.state === 'paused') {
    throw new BatonError(
      DomainErrorCode.DomainActive,
      `domain '${domain.name}' is paused (${live.reason}) and cannot act on a power-button press; 'baton vm resume ${domain.name}' first, or 'baton vm destroy ${domain.name}'`,
      { domain: domain.name, state: 'paused' },
    );
  }
  const begun = Date.now();
  const client = await connectMonitor(record.monitorSocket, domain.name);
  let guestShutdownEvent = false;
  try {
    const shutdownEvent = client.waitEvent('SHUTDOWN', (e) => e.data?.guest === true, Math.max(timeoutMs, 1));
    shutdownEvent.then(() => (guestShutdownEvent = true), () => undefined);
    await client.execute('system_powerdown');
    appendDomainLog(paths, domain.name, `shutdown requested (system_powerdown), waiting up to ${timeoutMs} ms`);
    if (timeoutMs === 0) return { name: domain.name, uuid: domain.uuid, outcome: 'requested', guestShutdownEvent, waitedMs: 0 };
    const exited = await waitForExit(record.pid, record.pidStartTime, timeoutMs);
    const waitedMs = Date.now() - begun;
    if (!exited) {
      if (options.force) {
        client.close();
        await destroyDomain(store, domain.name);
        return { name: domain.name, uuid: domain.uuid, outcome: 'destroyed', guestShutdownEvent, waitedMs };
      }
      throw new BatonError(
        ManagerErrorCode.ShutdownTimeout,
        `domain '${domain.name}' did not shut down within ${Math.round(timeoutMs / 1000)} s and is still running; wait longer (--timeout), force it off with 'baton vm destroy ${domain.name}', or use --force`,
        { domain: domain.name, timeoutMs },
      );
    }
    await store.withLock(() => {
      const now = readRuntimeRecord(paths, domain.name);
      // The reaper may have recorded it already; only a record still naming this pid is ours to close.
      if (now && now.state !== 'shut off' && now.pid === record.pid) {
        markShutoff(paths, domain.name, domain.uuid, 'shutdown');
        removeHypervisorFiles(paths, domain.name);
      }
    });
    appendDomainLog(paths, domain.name, `domain '${domain.name}' shut down after ${waitedMs} ms`);
    return { name: domain.name, uuid: domain.uuid, outcome: 'shutdown', guestShutdownEvent, waitedMs };
  } finally {
    client.close();
  }
}

/** `vm suspend`: stops the vCPUs (QMP stop). Suspending a paused domain changes nothing, as in libvirt. */
export async function suspendDomain(store: DomainStore, nameOrUuid: string): Promise<{ name: string; uuid: string; state: 'paused' }> {
  return runControl(store, nameOrUuid, 'stop', 'paused', 'user');
}

/** `vm resume`: lets the vCPUs run again (QMP cont). */
export async function resumeDomain(store: DomainStore, nameOrUuid: string): Promise<{ name: string; uuid: string; state: 'running' }> {
  return runControl(store, nameOrUuid, 'cont', 'running', 'unpaused');
}

async function runControl<S extends 'paused' | 'running'>(store: DomainStore, nameOrUuid: string, command: 'stop' | 'cont', state: S, reason: 'user' | 'unpaused'): Promise<{ name: string; uuid: string; state: S }> {
  const paths = store.paths;
  return store.withLock(async () => {
    const domain = store.get(nameOrUuid);
    const record = activeRecord(paths, domain);
    const client = await connectMonitor(record.monitorSocket, domain.name);
    try {
      await client.execute(command);
    } catch (err) {
      throw new BatonError(ManagerErrorCode.Monitor, `cannot ${command === 'stop' ? 'suspend' : 'resume'} domain '${domain.name}': ${(err as Error).message}`, { domain: domain.name });
    } finally {
      client.close();
    }
    if (record.state !== state) writeRuntimeRecord(paths, { ...record, state, reason });
    return { name: domain.name, uuid: domain.uuid, state };
  });
}

export interface LiveDomainStatus extends DomainStatus {
  /** The hypervisor's own run state (QMP query-status), when it answered. */
  hypervisorStatus?: string;
}

/**
 * The state virsh would report, asking the hypervisor when the domain is active: the record
 * says what was asked for, QMP says what is (a guest stuck in internal-error shows as
 * "paused (crashed)"). A dead hypervisor is "shut off (crashed)" (runtime.ts); one that does
 * not answer within 2 s is reported as its record says.
 */
export async function liveDomainState(paths: BatonPaths, name: string): Promise<LiveDomainStatus> {
  const status = domainState(paths, name);
  const record = status.active;
  if (!record) return status;
  let hvStatus: string;
  let client: QmpClient | undefined;
  try {
    client = await connectMonitor(record.monitorSocket, name, STATUS_QUERY_TIMEOUT_MS);
    hvStatus = (await client.execute<{ status: string }>('query-status', undefined, { timeoutMs: STATUS_QUERY_TIMEOUT_MS })).status;
  } catch (err) {
    log.warn(`reporting the recorded state of '${name}': ${(err as Error).message}`);
    return status;
  } finally {
    client?.close();
  }
  const recordedReason = (wanted: string, fallback: string): string => (record.state === wanted ? record.reason : fallback);
  switch (hvStatus) {
    case 'running':
      return { ...status, state: 'running', reason: recordedReason('running', 'unpaused'), hypervisorStatus: hvStatus };
    case 'paused':
    case 'prelaunch':
      return { ...status, state: 'paused', reason: recordedReason('paused', 'user'), hypervisorStatus: hvStatus };
    case 'internal-error':
      return { ...status, state: 'paused', reason: 'crashed', hypervisorStatus: hvStatus };
    case 'shutdown':
      return { ...status, state: 'paused', reason: 'shutting down', hypervisorStatus: hvStatus };
    case 'inmigrate':
    case 'postmigrate':
    case 'finish-migrate':
      return { ...status, state: 'paused', reason: 'migrating', hypervisorStatus: hvStatus };
    default:
      return { ...status, reason: 'unknown', hypervisorStatus: hvStatus };
  }
}

/** `liveDomainState` by name or UUID, for `vm domstate`. */
export async function domainLiveState(store: DomainStore, nameOrUuid: string): Promise<{ domain: Domain; status: LiveDomainStatus }> {
  const domain = store.get(nameOrUuid);
  return { domain, status: await liveDomainState(store.paths, domain.name) };
}

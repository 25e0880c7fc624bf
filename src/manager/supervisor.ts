import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { QmpClient } from '../hypervisor/monitor/qmp-client';
import type { MachineConfig } from '../hypervisor/machine-config';
import { BatonPaths, domainFiles } from '../domain/paths';
import { isProcessAlive, processStartTime } from '../domain/runtime';
import { BatonError } from '../util/errors';
import { ManagerErrorCode } from './errors';
import { HYPERVISOR_ENTRY } from './hypervisor-build';
import { machineConfigFile, memoryFile } from './machine-config-from-domain';

/**
 * Starting a baton-hv process for a domain and watching it from outside.
 *
 * The hypervisor runs in its own session (setsid), so it outlives the CLI that started it
 * and no terminal signal reaches it. Its parent is a tiny `sh` (the "keeper") that waits for
 * it and then runs the reaper (reaper-main.ts), which records how it ended: exit status 0
 * (guest power-off, `quit`) → shut off (shutdown); anything else, kill -9 included → shut off
 * (crashed) — libvirt's distinction between a QEMU that said SHUTDOWN and one that vanished.
 * Without the keeper a power-off from inside the guest would look like a crash. If the keeper
 * itself is killed, readers still see the dead pid (runtime.ts `domainState`): crashed.
 *
 * stdout and stderr of the hypervisor, keeper and reaper append to `<log dir>/<name>.log`.
 */

const KEEPER_SCRIPT = [
  // fd 3 is a pipe to the manager: it learns the hypervisor's pid from it; the hypervisor must not hold it.
  '"$@" 3>&- &',
  'hv=$!',
  // Its start time (field 22 of /proc/PID/stat, after the parenthesised command name) lets
  // the reaper tell this process from a later one that reused the pid.
  'started=""',
  'if read -r stat < "/proc/$hv/stat"; then set -- ${stat##*) }; shift 19; started=$1; fi',
  'echo "$hv" >&3',
  'exec 3>&-',
  'wait "$hv"',
  'status=$?',
  'exec "$BATON_KEEPER_NODE" "$BATON_KEEPER_REAPER" "$BATON_KEEPER_DOMAIN" "$hv" "$status" "$started"',
].join('\n');

const REAPER_ENTRY = path.join(__dirname, 'reaper-main.js');

export interface SpawnedHypervisor {
  pid: number;
  pidStartTime: string;
  /** The keeper shell (the hypervisor's parent). */
  keeperPid: number;
}

/** Appends one line to the domain's log (what the manager did, for whoever reads the log later). */
export function appendDomainLog(paths: BatonPaths, name: string, line: string): void {
  fs.mkdirSync(paths.logDir, { recursive: true, mode: 0o755 });
  fs.appendFileSync(domainFiles(paths, name).log, `${new Date().toISOString()} ${line}\n`);
}

/** The last `bytes` of the domain's log, for error messages about a failed start. */
export function domainLogTail(paths: BatonPaths, name: string, bytes = 2000): string {
  try {
    const text = fs.readFileSync(domainFiles(paths, name).log, 'utf8');
    return text.slice(-bytes).trim();
  } catch {
    return '';
  }
}

/**
 * Writes the machine config and starts baton-hv under its keeper; resolves once its pid is
 * known. `configFile` defaults to the domain's canonical one; a migration destination gets a
 * file of its own so the source's stays as it is until the switch (migrate.ts).
 */
export async function spawnHypervisor(paths: BatonPaths, config: MachineConfig, configFile = machineConfigFile(paths, config.name)): Promise<SpawnedHypervisor> {
  const name = config.name;
  fs.mkdirSync(paths.runDir, { recursive: true, mode: 0o755 });
  fs.mkdirSync(paths.logDir, { recursive: true, mode: 0o755 });
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 });

  const logFd = fs.openSync(domainFiles(paths, name).log, 'a', 0o640);
  let keeper;
  try {
    keeper = spawn('sh', ['-c', KEEPER_SCRIPT, 'baton-keeper', process.execPath, HYPERVISOR_ENTRY, '--config', configFile], {
      detached: true,
      stdio: ['ignore', logFd, logFd, 'pipe'],
      env: {
        ...process.env,
        // The reaper must find the same directories whatever the caller's environment was.
        BATON_STATE_DIR: paths.stateDir,
        BATON_RUN_DIR: paths.runDir,
        BATON_LOG_DIR: paths.logDir,
        BATON_KEEPER_NODE: process.execPath,
        BATON_KEEPER_REAPER: REAPER_ENTRY,
        BATON_KEEPER_DOMAIN: name,
      },
    });
  } finally {
    fs.closeSync(logFd);
  }
  const pidPipe = keeper.stdio[3] as NodeJS.ReadableStream;
  const pidText = await new Promise<string>((resolve, reject) => {
    let text = '';
    pidPipe.on('data', (chunk: Buffer) => (text += chunk.toString()));
    pidPipe.on('end', () => resolve(text.trim()));
    keeper.once('error', (err) => reject(new BatonError(ManagerErrorCode.StartFailed, `cannot run sh to start baton-hv for '${name}': ${err.message}`)));
  });
  keeper.unref();
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new BatonError(ManagerErrorCode.StartFailed, `baton-hv for '${name}' did not start (keeper said '${pidText}'); see ${domainFiles(paths, name).log}`);
  }
  // A hypervisor that died at once has no start time; waitForMonitor then reports why.
  return { pid, pidStartTime: processStartTime(pid) ?? '', keeperPid: keeper.pid as number };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Connects to the hypervisor's monitor once it answers; fails early if the process dies.
 * `socket` defaults to the domain's canonical monitor (a migration destination has its own).
 */
export async function waitForMonitor(
  paths: BatonPaths,
  name: string,
  hv: { pid: number; pidStartTime: string },
  timeoutMs: number,
  socket = domainFiles(paths, name).monitorSocket,
): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    if (!isProcessAlive(hv.pid, hv.pidStartTime)) {
      throw new BatonError(ManagerErrorCode.StartFailed, `baton-hv for domain '${name}' exited during start-up; its log (${domainFiles(paths, name).log}) ends with:\n${domainLogTail(paths, name)}`, { domain: name });
    }
    if (fs.existsSync(socket)) {
      try {
        return await QmpClient.connect(socket, { timeoutMs: Math.max(1000, deadline - Date.now()) });
      } catch (err) {
        lastError = (err as Error).message;
      }
    }
    if (Date.now() > deadline) {
      throw new BatonError(ManagerErrorCode.StartFailed, `baton-hv for domain '${name}' (pid ${hv.pid}) did not answer on its monitor ${socket} within ${timeoutMs} ms${lastError ? ` (${lastError})` : ''}`, { domain: name });
    }
    await sleep(20);
  }
}

/** Connects to a running domain's monitor (short timeout: a live hypervisor answers at once). */
export async function connectMonitor(socket: string, name: string, timeoutMs = 5000): Promise<QmpClient> {
  try {
    return await QmpClient.connect(socket, { timeoutMs });
  } catch (err) {
    throw new BatonError(ManagerErrorCode.Monitor, `cannot talk to the hypervisor of domain '${name}' on ${socket}: ${(err as Error).message}`, { domain: name, socket });
  }
}

/** Resolves true once the process is gone (or is another process now), false after `timeoutMs`. */
export async function waitForExit(pid: number, startTime: string, timeoutMs: number, pollMs = 25): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isProcessAlive(pid, startTime)) {
    if (Date.now() >= deadline) return false;
    await sleep(pollMs);
  }
  return true;
}

/** Sends `signal` to our hypervisor only: never to a pid that now belongs to someone else. */
export function signalHypervisor(pid: number, startTime: string, signal: NodeJS.Signals): void {
  if (!isProcessAlive(pid, startTime)) return;
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/**
 * Files of a migration's destination carry `.incoming-<tag>` after the canonical name until it
 * takes over (migrate.ts); `kind` is monitor, console, migration or hv-config.
 */
export function incomingFile(paths: BatonPaths, name: string, kind: 'monitor' | 'console' | 'migration' | 'hv-config', tag: string): string {
  return path.join(paths.runDir, `${name}.${kind}.incoming-${tag}`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Destination files a migration interrupted by a crash or kill left behind. */
function incomingLeftovers(paths: BatonPaths, name: string): string[] {
  const pattern = new RegExp(`^${escapeRegExp(name)}\\.(monitor|console|migration|hv-config)\\.incoming-[0-9a-z]+$`);
  try {
    return fs.readdirSync(paths.runDir).filter((entry) => pattern.test(entry)).map((entry) => path.join(paths.runDir, entry));
  } catch {
    return [];
  }
}

/**
 * Removes what a stopped hypervisor leaves in the run directory (sockets, machine config, RAM
 * file, leftovers of an interrupted migration). Call under the store lock: a migration holds
 * it while its destination's files exist.
 */
export function removeHypervisorFiles(paths: BatonPaths, name: string): void {
  const files = domainFiles(paths, name);
  for (const file of [files.monitorSocket, files.consoleSocket, machineConfigFile(paths, name), memoryFile(paths, name), ...incomingLeftovers(paths, name)]) {
    try {
      fs.unlinkSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

import crypto from 'node:crypto';
import fs from 'node:fs';
import type { QmpClient, QmpEvent } from '../hypervisor/monitor/qmp-client';
import type { MachineConfig } from '../hypervisor/machine-config';
import { BatonPaths, domainFiles } from '../domain/paths';
import { ActiveRecord, domainState, isProcessAlive, writeRuntimeRecord } from '../domain/runtime';
import { DomainStore } from '../domain/store';
import { Domain, interfacePolicy, MigrationPolicy } from '../domain/types';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { ManagerErrorCode } from './errors';
import { deleteTapIfPresent, linkExists, moveTapHostConfig, PreparedTapSwitch, prepareNewTap, readTapHostConfig, TapHostConfig } from './host-network';
import { hypervisorBuildId } from './hypervisor-build';
import { IncomingNicBackend, machineConfigFile, machineConfigFromDomain, nicHandsOverFds, nicIds } from './machine-config-from-domain';
import { appendDomainLog, connectMonitor, incomingFile, signalHypervisor, spawnHypervisor, SpawnedHypervisor, waitForExit, waitForMonitor } from './supervisor';

const log = loggerFor('migrate');

/**
 * `vm migrate`: moves a running domain to a new baton-hv process on this host, keeping its
 * name, UUID, id, socket paths and `vm list` entry; only the pid changes.
 *
 * Order of events (everything that takes time happens before the source pauses):
 *   1. under the store lock, plan each NIC's network policy (DESIGN.md, "three network
 *      policies") against what the running source can do;
 *   2. start the destination for the same definition with `-incoming defer`, on temporary
 *      monitor/console sockets, its netdevs waiting for fds (local-fd) or opening a new TAP
 *      (new-tap, whose host side is prepared now: netns, MAC, MTU, up — no address yet);
 *   3. `migrate-incoming` on the destination (returns once it listens), then `migrate` on the
 *      source; MIGRATION events drive the progress display, and as the guest pauses new-tap
 *      moves the addresses to the new TAP (an `ip -batch` started beforehand, waiting);
 *   4. on `completed`: the destination must
 *      report running (or paused, for a paused source); the runtime record names the new
 *      process; the source is told to `quit` — its keeper's reaper then finds a record naming
 *      another process and records nothing — and once it is gone the destination's sockets
 *      are renamed onto the canonical paths (a bound UNIX socket keeps accepting after
 *      rename(2); the source removes the canonical path when it exits, so not before).
 * Any failure before `completed` kills the destination, leaves the source running with its
 * TAP and RAM (the hypervisor resumes it) and the runtime record untouched.
 */

export const MigrateErrorCode = {
  /** The migration failed or timed out; the domain still runs in its old process. */
  Failed: 'EMIGRATE',
  /** The asked-for network policy cannot be used for this domain (nothing was started). */
  Policy: 'EMIGRATEPOLICY',
  /** The guest moved, but a step after the switch failed (host network, retiring the source). */
  AfterSwitch: 'EMIGRATEPOST',
} as const;

/** The policies a migration can use; the domain's `auto` is resolved to one of them. */
export type NetworkPolicy = Exclude<MigrationPolicy, 'auto'>;
export const NETWORK_POLICIES: readonly NetworkPolicy[] = ['local-fd', 'new-tap', 'netpass'];

/** Budget for starting the destination and completing the migration. */
export const DEFAULT_MIGRATE_TIMEOUT_MS = 60_000;
/** The source is in postmigrate when told to quit: it has nothing left to do. */
const SOURCE_QUIT_GRACE_MS = 5000;
/** How long a cancelled migration gets to report its end. */
const CANCEL_GRACE_MS = 5000;
const DESTINATION_KILL_GRACE_MS = 5000;

export interface MigrationProgress {
  phase: 'destination' | 'listening' | 'setup' | 'active' | 'device' | 'completed' | 'switched' | 'retired';
  message: string;
}

export interface MigrateOptions {
  /** Use this policy for every interface instead of the definition's (`--local` is `local-fd`). */
  policy?: NetworkPolicy;
  /** Budget for the destination's start-up and the migration itself. */
  timeoutMs?: number;
  onProgress?: (progress: MigrationProgress) => void;
}

export interface NicMigrationResult {
  device: string;
  policy: NetworkPolicy;
  /** The TAP the guest uses now. */
  tap: string;
  /** The TAP it used before (equal to `tap` for local-fd). */
  previousTap: string;
  /** ifindex of `tap` (local-fd: unchanged, the same TAP). */
  ifindex?: number;
  /** new-tap: time to move the addresses onto the new TAP after the switch. */
  hostSwitchMs?: number;
}

export interface MigrateResult {
  name: string;
  uuid: string;
  id: number;
  /** The policy every NIC used, or `mixed`. A domain without NICs reports what it was asked for. */
  policy: NetworkPolicy | 'mixed';
  /** The guest's pause, as the source measured it (QMP query-migrate `downtime`). */
  pause_ms: number;
  /** `migrate` to completion, as the source measured it (query-migrate `total-time`). */
  total_ms: number;
  /** `migrate` to the destination's "ready" (query-migrate `setup-time`). */
  setup_ms: number;
  /** Start of the destination process until it listened for the migration. */
  destination_start_ms: number;
  /** The whole command: lock taken to record updated and source gone. */
  elapsed_ms: number;
  old_pid: number;
  new_pid: number;
  /** How guest RAM moved: by its fd, or through the shared file both processes map. */
  ram: 'fd' | 'file';
  state: 'running' | 'paused';
  hypervisorBuild: string;
  nics: NicMigrationResult[];
}

interface NicPlan {
  index: number;
  policy: NetworkPolicy;
  /** The TAP the source's NIC has now (its x-query-nics ifname). */
  currentTap: string;
  /** new-tap: the TAP the destination opens. */
  newTap?: string;
  backend: IncomingNicBackend;
  netns?: string;
  /** The source's device was started handing its fds over (local-migration on). */
  startedWithHandover: boolean;
  oldHostConfig?: TapHostConfig;
}

interface RunningNic {
  id: string;
  ifname: string;
}

function policyError(domain: Domain, message: string): BatonError {
  return new BatonError(MigrateErrorCode.Policy, message, { domain: domain.name });
}

/** The machine config the source runs with (its `.hv-config`), when the manager wrote one. */
function readRunningConfig(paths: BatonPaths, name: string): MachineConfig | undefined {
  try {
    return JSON.parse(fs.readFileSync(machineConfigFile(paths, name), 'utf8')) as MachineConfig;
  } catch {
    return undefined;
  }
}

/**
 * The destination is built from the definition; a definition changed since the start (vm
 * define on a running domain) would give a machine that cannot take the source's state.
 */
function checkDefinitionMatches(domain: Domain, running: MachineConfig | undefined, fresh: MachineConfig): void {
  if (!running) return;
  const differences: string[] = [];
  const compare = (what: string, was: unknown, now: unknown): void => {
    if (JSON.stringify(was) !== JSON.stringify(now)) differences.push(`${what} ${JSON.stringify(was)} → ${JSON.stringify(now)}`);
  };
  compare('memory MiB', running.memory.sizeMiB, fresh.memory.sizeMiB);
  compare('memory backing', running.memory.backing, fresh.memory.backing);
  compare('vcpus', running.vcpus, fresh.vcpus);
  compare('kernel', running.kernel, fresh.kernel);
  compare('NICs', running.devices.length, fresh.devices.length);
  if (differences.length > 0) {
    throw new BatonError(
      MigrateErrorCode.Failed,
      `domain '${domain.name}' was redefined while running (${differences.join('; ')}); a destination built from the new definition could not take the running guest: shut it down and start it again to apply the definition, then migrate`,
      { domain: domain.name },
    );
  }
}

/** Whether the running source's NIC `index` hands its fds over (its device's local-migration). */
function sourceHandsOverFds(running: MachineConfig | undefined, domain: Domain, index: number): boolean {
  const device = running?.devices[index];
  if (device === undefined) return nicHandsOverFds(domain, index);
  return !/(^|,)local-migration=(off|false|no)(,|$)/.test(device);
}

/** A TAP name that exists neither in the root namespace nor in `netns`: the configured one back, or a variant of it. */
function freshTapName(configured: string, current: string, netns: string | undefined): string {
  const stem14 = configured.slice(0, 14);
  const stem13 = configured.slice(0, 13);
  const candidates = [
    configured.length < 15 ? `${configured}n` : `${stem14}${configured.endsWith('n') ? 'm' : 'n'}`,
    configured,
    ...Array.from({ length: 10 }, (_, k) => `${stem13}m${k}`),
  ];
  const free = candidates.find((name) => name !== current && !linkExists(name) && (netns === undefined || !linkExists(name, netns)));
  if (!free) throw new BatonError(MigrateErrorCode.Policy, `no free TAP name for a new-tap migration of '${configured}' (tried ${candidates.join(', ')})`, { tap: configured });
  return free;
}

/**
 * Decides per NIC how its TAP moves. On one host `netpass` is new-tap plus netpass: a new TAP,
 * and the frames that reach the old one while the guest is paused are buffered by the source
 * and replayed on the destination.
 */
function planNics(domain: Domain, running: MachineConfig | undefined, runningNics: RunningNic[], override: NetworkPolicy | undefined): NicPlan[] {
  return domain.interfaces.map((nic, index) => {
    const wanted = override ?? interfacePolicy(domain, nic);
    // `auto` on one host is local-fd: nothing to re-plumb, nothing lost.
    const policy: NetworkPolicy = wanted === 'auto' ? 'local-fd' : wanted;
    const device = nicIds(index).device;
    const currentTap = runningNics.find((n) => n.id === device)?.ifname;
    if (!currentTap) throw policyError(domain, `the running hypervisor of '${domain.name}' reports no NIC ${device}; it does not match the definition — restart the domain`);
    const startedWithHandover = sourceHandsOverFds(running, domain, index);
    if (policy === 'local-fd') return { index, policy, currentTap, backend: { kind: 'incoming-fds' }, netns: nic.netns, startedWithHandover };
    if (!nic.managed) {
      throw policyError(domain, `${policy} needs a TAP Baton manages, but ${device} uses TAP '${nic.tapName}' with managed='no'; use --policy local-fd`);
    }
    const newTap = freshTapName(nic.tapName, currentTap, nic.netns);
    return { index, policy, currentTap, newTap, backend: { kind: 'open', ifname: newTap }, netns: nic.netns, startedWithHandover };
  });
}

/**
 * Makes each source NIC hand its TAP fds over exactly when its policy is local-fd (QEMU's
 * device property `local-migration`, set at run time with qom-set). Returns the NICs changed,
 * to set back if the migration fails.
 */
async function setSourceHandover(source: QmpClient, domain: Domain, plans: NicPlan[]): Promise<NicPlan[]> {
  const changed: NicPlan[] = [];
  for (const plan of plans) {
    const wanted = plan.policy === 'local-fd';
    if (wanted === plan.startedWithHandover) continue;
    const device = nicIds(plan.index).device;
    try {
      await source.execute('qom-set', { path: `/machine/peripheral/${device}`, property: 'local-migration', value: wanted });
    } catch (err) {
      throw policyError(
        domain,
        `${device} of '${domain.name}' runs with local-migration=${plan.startedWithHandover ? 'on' : 'off'} and its hypervisor cannot change that (qom-set: ${(err as Error).message}); migrate with --policy ${plan.startedWithHandover ? 'local-fd' : 'new-tap'}`,
      );
    }
    changed.push(plan);
  }
  return changed;
}

async function restoreSourceHandover(source: QmpClient, changed: NicPlan[]): Promise<void> {
  for (const plan of changed) {
    const device = nicIds(plan.index).device;
    await source.execute('qom-set', { path: `/machine/peripheral/${device}`, property: 'local-migration', value: plan.startedWithHandover }).catch((err: Error) => {
      log.warn(`could not set local-migration of ${device} back to ${plan.startedWithHandover}: ${err.message}`);
    });
  }
}

/**
 * The host side of new-tap NICs: an `ip -batch` per new TAP started before the migration and
 * waiting, run the moment the source reports that it pauses the guest (from a QMP event
 * callback, so nothing there throws), and moved back if the migration then fails.
 */
class NewTapSwitch {
  private prepared: { plan: NicPlan; ip: PreparedTapSwitch }[] = [];

  prepare(plans: NicPlan[]): void {
    for (const plan of plans) {
      if (plan.newTap && plan.oldHostConfig) this.prepared.push({ plan, ip: new PreparedTapSwitch(plan.currentTap, plan.newTap, plan.netns, plan.oldHostConfig) });
    }
  }

  moveToNewTaps(): void {
    for (const { ip } of this.prepared) ip.run();
  }

  /** After the switch: how long each move took (by interface index), or what failed. */
  async settle(): Promise<Map<number, number>> {
    const took = new Map<number, number>();
    let failure: Error | undefined;
    for (const { plan, ip } of this.prepared) {
      try {
        took.set(plan.index, await ip.finished());
      } catch (err) {
        failure ??= err as Error;
      }
    }
    this.prepared = [];
    if (failure) throw new BatonError(MigrateErrorCode.AfterSwitch, failure.message, { cause: (failure as BatonError).code });
    return took;
  }

  /** The migration failed: the source runs on, its old TAPs get their configuration back. */
  async abandon(): Promise<void> {
    for (const { plan, ip } of this.prepared) {
      if (!ip.ran) {
        await ip.cancel();
        continue;
      }
      await ip.finished().catch(() => undefined);
      try {
        moveTapHostConfig(plan.newTap as string, plan.currentTap, plan.netns, plan.oldHostConfig as TapHostConfig);
      } catch (err) {
        log.error(`giving TAP ${plan.currentTap} its configuration back failed: ${(err as Error).message}`);
      }
    }
    this.prepared = [];
  }
}

/** Unique per migration: a retiring source removes its own socket paths when it exits. */
function destinationFiles(paths: BatonPaths, name: string): { monitorSocket: string; consoleSocket: string; config: string; migrationSocket: string } {
  const tag = `${Date.now().toString(36)}${crypto.randomBytes(3).toString('hex')}`;
  return {
    monitorSocket: incomingFile(paths, name, 'monitor', tag),
    consoleSocket: incomingFile(paths, name, 'console', tag),
    config: incomingFile(paths, name, 'hv-config', tag),
    migrationSocket: incomingFile(paths, name, 'migration', tag),
  };
}

function removeQuietly(file: string): void {
  fs.rmSync(file, { force: true });
}

function migrationStatusMessage(status: string): string {
  switch (status) {
    case 'setup':
      return 'setting up (RAM and TAP fds to the destination)';
    case 'active':
      return 'destination ready, pausing the guest';
    case 'device':
      return 'guest paused, sending device state';
    default:
      return status;
  }
}

interface MigrationTimes {
  downtime: number;
  totalTime: number;
  setupTime: number;
}

/**
 * Runs `migrate` on the source and waits for its end. On timeout asks `migrate_cancel`; a
 * migration already past the point of no return (device state sent) may still complete.
 */
async function runSourceMigration(
  source: QmpClient,
  uri: string,
  netpass: boolean,
  deadline: number,
  onProgress: (p: MigrationProgress) => void,
  onPausing: () => void,
): Promise<MigrationTimes> {
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  // `local`: RAM by its fd (and the TAP fds of NICs with local-migration on). netpass only
  // when asked, so a source of an older build that lacks the parameter still migrates.
  await source.execute('migrate-set-parameters', { local: true, ...(netpass ? { netpass: true } : {}) });
  const isEnd = (e: QmpEvent): boolean => ['completed', 'failed', 'cancelled'].includes(String(e.data?.status));
  const stopProgress = source.onEvent((e) => {
    if (e.event !== 'MIGRATION' || isEnd(e)) return;
    // `active`: the destination is ready and the source pauses the guest now.
    if (e.data?.status === 'active') onPausing();
    onProgress({ phase: e.data?.status as MigrationProgress['phase'], message: migrationStatusMessage(String(e.data?.status)) });
  });
  try {
    const end = source.waitEvent('MIGRATION', isEnd, Math.max(1, deadline - Date.now()));
    end.catch(() => undefined);
    await source.execute('migrate', { uri });
    let final: QmpEvent;
    try {
      final = await end;
    } catch (err) {
      if ((err as BatonError).code !== 'QMP_TIMEOUT') throw err;
      const afterCancel = source.waitEvent('MIGRATION', isEnd, CANCEL_GRACE_MS);
      afterCancel.catch(() => undefined);
      await source.execute('migrate_cancel');
      final = await afterCancel;
      if (final.data?.status !== 'completed') throw new Error('it did not complete within --timeout and was cancelled');
    }
    const info = await source.execute<{ status: string; downtime?: number; 'total-time'?: number; 'setup-time'?: number; 'error-desc'?: string }>('query-migrate');
    if (final.data?.status !== 'completed' || info.status !== 'completed') {
      throw new Error(`the source reports ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    return { downtime: info.downtime ?? 0, totalTime: info['total-time'] ?? 0, setupTime: info['setup-time'] ?? 0 };
  } finally {
    stopProgress();
  }
}

/** Ends a destination that will not take over, and what it left behind. */
async function discardDestination(hv: SpawnedHypervisor | undefined, files: ReturnType<typeof destinationFiles>, plans: NicPlan[]): Promise<void> {
  if (hv) {
    signalHypervisor(hv.pid, hv.pidStartTime, 'SIGKILL');
    if (!(await waitForExit(hv.pid, hv.pidStartTime, DESTINATION_KILL_GRACE_MS))) log.warn(`destination baton-hv pid ${hv.pid} survived SIGKILL for ${DESTINATION_KILL_GRACE_MS} ms`);
  }
  for (const file of [files.monitorSocket, files.consoleSocket, files.config, files.migrationSocket]) removeQuietly(file);
  // A new TAP goes with the process that opened it; a persistent leftover would block the next try.
  for (const plan of plans) {
    if (!plan.newTap) continue;
    try {
      deleteTapIfPresent(plan.newTap, plan.netns);
      deleteTapIfPresent(plan.newTap);
    } catch (err) {
      log.warn((err as Error).message);
    }
  }
}

/** Tells the postmigrate source to quit; signals if it does not. */
async function retireSource(client: QmpClient, record: ActiveRecord): Promise<'quit' | 'SIGTERM' | 'SIGKILL'> {
  try {
    await client.execute('quit', undefined, { timeoutMs: SOURCE_QUIT_GRACE_MS });
  } catch (err) {
    // quit closes the connection as it answers; a lost reply is no failure.
    log.debug(`quit on the source: ${(err as Error).message}`);
  }
  if (await waitForExit(record.pid, record.pidStartTime, SOURCE_QUIT_GRACE_MS)) return 'quit';
  signalHypervisor(record.pid, record.pidStartTime, 'SIGTERM');
  if (await waitForExit(record.pid, record.pidStartTime, SOURCE_QUIT_GRACE_MS)) return 'SIGTERM';
  signalHypervisor(record.pid, record.pidStartTime, 'SIGKILL');
  if (await waitForExit(record.pid, record.pidStartTime, SOURCE_QUIT_GRACE_MS)) return 'SIGKILL';
  throw new BatonError(MigrateErrorCode.AfterSwitch, `the old baton-hv (pid ${record.pid}) of '${record.name}' survived SIGKILL after the migration; the guest runs in the new process, look at /proc/${record.pid}/stack`, { pid: record.pid });
}

function ifindexOf(tap: string, netns: string | undefined): number | undefined {
  try {
    return readTapHostConfig(tap, netns).ifindex;
  } catch {
    return undefined;
  }
}

/** `vm migrate`: see the comment at the top of this file. */
export async function migrateDomain(store: DomainStore, nameOrUuid: string, options: MigrateOptions = {}): Promise<MigrateResult> {
  const begun = Date.now();
  const paths = store.paths;
  const deadline = begun + (options.timeoutMs ?? DEFAULT_MIGRATE_TIMEOUT_MS);
  const onProgress = options.onProgress ?? (() => undefined);
  return store.withLock(async () => {
    const domain = store.get(nameOrUuid);
    const status = domainState(paths, domain.name);
    const record = status.active;
    if (!record) {
      throw new BatonError(
        ManagerErrorCode.NotActive,
        `domain '${domain.name}' is not running (${status.state}, ${status.reason}); only a running or paused domain can migrate — start it with 'baton vm start ${domain.name}'`,
        { domain: domain.name, state: status.state },
      );
    }
    const running = readRunningConfig(paths, domain.name);
    const files = destinationFiles(paths, domain.name);
    const canonical = domainFiles(paths, domain.name);

    const source = await connectMonitor(record.monitorSocket, domain.name);
    let destinationClient: QmpClient | undefined;
    let destination: SpawnedHypervisor | undefined;
    let plans: NicPlan[] = [];
    let handoverChanged: NicPlan[] = [];
    const hostSide = new NewTapSwitch();
    let switched = false;
    /** Past the refusals: a destination is (being) started, failures are migration failures. */
    let migrating = false;
    try {
      const sourceStatus = (await source.execute<{ status: string }>('query-status')).status;
      if (sourceStatus !== 'running' && sourceStatus !== 'paused') {
        throw new BatonError(MigrateErrorCode.Failed, `domain '${domain.name}' cannot migrate while its hypervisor is '${sourceStatus}'; it must be running or paused`, { domain: domain.name, status: sourceStatus });
      }
      const runningNics = domain.interfaces.length > 0 ? await source.execute<RunningNic[]>('x-query-nics') : [];
      plans = planNics(domain, running, runningNics, options.policy);
      const netpass = plans.some((p) => p.policy === 'netpass');
      const config = machineConfigFromDomain(domain, paths, {
        startPaused: false,
        incoming: { monitorSocket: files.monitorSocket, consoleSocket: files.consoleSocket, nics: plans.map((p) => p.backend) },
      });
      checkDefinitionMatches(domain, running, config);
      for (const plan of plans) if (plan.newTap) plan.oldHostConfig = readTapHostConfig(plan.currentTap, plan.netns);

      const policyNames = [...new Set(plans.map((p) => p.policy))];
      const policy: MigrateResult['policy'] = policyNames.length === 0 ? (options.policy ?? 'local-fd') : policyNames.length === 1 ? policyNames[0] : 'mixed';
      handoverChanged = await setSourceHandover(source, domain, plans);
      appendDomainLog(paths, domain.name, `migrating domain '${domain.name}' from baton-hv pid ${record.pid} (policy ${policy})`);

      // 2. The destination, built and listening before anything pauses.
      const destinationBegun = Date.now();
      onProgress({ phase: 'destination', message: 'starting the destination hypervisor' });
      migrating = true;
      destination = await spawnHypervisor(paths, config, files.config);
      const spawned = destination;
      destinationClient = await waitForMonitor(paths, domain.name, spawned, Math.max(1000, deadline - Date.now()), files.monitorSocket).catch((err: Error) => {
        // waitForMonitor's own message is about a domain start and quotes the whole log tail.
        if (isProcessAlive(spawned.pid, spawned.pidStartTime)) throw err;
        throw new Error(`the destination baton-hv (pid ${spawned.pid}) exited before its monitor answered (its output is in ${canonical.log})`);
      });
      // The destination opened its new TAPs (in the root namespace) while it started.
      for (const plan of plans) if (plan.newTap && plan.oldHostConfig) prepareNewTap(plan.newTap, plan.netns, plan.oldHostConfig);
      hostSide.prepare(plans);
      await destinationClient.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      await destinationClient.execute('migrate-incoming', { uri: `unix:${files.migrationSocket}` }, { timeoutMs: Math.max(1000, deadline - Date.now()) });
      const destinationStartMs = Date.now() - destinationBegun;
      onProgress({ phase: 'listening', message: `destination baton-hv pid ${destination.pid} listening (${destinationStartMs} ms)` });

      // 3. The migration proper. New TAPs take over the host side as the guest pauses (the
      // MIGRATION `active` event): from then on frames for the guest queue in the new TAP,
      // which the destination reads once it runs, instead of reaching an old TAP that nobody
      // reads (netpass: that the source buffers until the destination runs).
      const times = await runSourceMigration(source, `unix:${files.migrationSocket}`, netpass, deadline, onProgress, () => hostSide.moveToNewTaps());
      switched = true;
      onProgress({ phase: 'completed', message: `completed: guest paused ${times.downtime} ms` });

      // 4. After the switch. A source that sent no `active` event gets its TAPs switched now.
      hostSide.moveToNewTaps();
      const hostSwitchMs = await hostSide.settle();
      const nicResults: NicMigrationResult[] = plans.map((plan) => {
        const device = nicIds(plan.index).device;
        if (!plan.newTap) return { device, policy: plan.policy, tap: plan.currentTap, previousTap: plan.currentTap };
        const took = hostSwitchMs.get(plan.index);
        return { device, policy: plan.policy, tap: plan.newTap, previousTap: plan.currentTap, ...(took !== undefined ? { hostSwitchMs: Math.round(took * 10) / 10 } : {}) };
      });
      const destinationStatus = (await destinationClient.execute<{ status: string }>('query-status')).status;
      const expected = sourceStatus;
      if (destinationStatus !== expected) {
        throw new BatonError(
          MigrateErrorCode.AfterSwitch,
          `the migration of '${domain.name}' completed but the destination (pid ${destination.pid}) is '${destinationStatus}', not '${expected}'; the source (pid ${record.pid}) is stopped in postmigrate — see ${canonical.log}`,
          { domain: domain.name, pid: destination.pid },
        );
      }
      const hypervisorBuild = hypervisorBuildId();
      const moved: ActiveRecord = {
        ...record,
        ...(sourceStatus === 'running' ? { state: 'running' as const, reason: 'migrated' as const } : {}),
        pid: destination.pid,
        pidStartTime: destination.pidStartTime,
        monitorSocket: canonical.monitorSocket,
        consoleSocket: canonical.consoleSocket,
        hypervisorBuild,
        migratedAt: new Date().toISOString(),
        migrations: (record.migrations ?? 0) + 1,
      };
      // Recorded before the source quits: its reaper then sees another process in the record.
      writeRuntimeRecord(paths, moved);
      onProgress({ phase: 'switched', message: `domain runs in baton-hv pid ${destination.pid}` });

      const retiredBy = await retireSource(source, record);
      // The source removed the canonical socket paths as it exited; now they name the destination's.
      fs.renameSync(files.monitorSocket, canonical.monitorSocket);
      if (domain.serial) fs.renameSync(files.consoleSocket, canonical.consoleSocket);
      fs.renameSync(files.config, machineConfigFile(paths, domain.name));
      removeQuietly(files.migrationSocket);
      for (const plan of plans) {
        if (!plan.newTap) continue;
        if (deleteTapIfPresent(plan.currentTap, plan.netns)) log.info(`deleted the old TAP ${plan.currentTap}`);
      }
      for (const nic of nicResults) nic.ifindex = ifindexOf(nic.tap, plans.find((p) => nicIds(p.index).device === nic.device)?.netns);
      onProgress({ phase: 'retired', message: `old baton-hv pid ${record.pid} ended (${retiredBy})` });

      const result: MigrateResult = {
        name: domain.name,
        uuid: domain.uuid,
        id: record.id,
        policy,
        pause_ms: times.downtime,
        total_ms: times.totalTime,
        setup_ms: times.setupTime,
        destination_start_ms: destinationStartMs,
        elapsed_ms: Date.now() - begun,
        old_pid: record.pid,
        new_pid: destination.pid,
        ram: domain.memoryBacking.source === 'file' ? 'file' : 'fd',
        state: moved.state,
        hypervisorBuild,
        nics: nicResults,
      };
      appendDomainLog(
        paths,
        domain.name,
        `domain '${domain.name}' migrated (${policy}, RAM by ${result.ram}) from baton-hv pid ${record.pid} to pid ${destination.pid}: pause ${result.pause_ms} ms, migration ${result.total_ms} ms, command ${result.elapsed_ms} ms`,
      );
      return result;
    } catch (err) {
      if (switched) {
        // The guest runs in the destination: its TAPs are switched, whatever failed.
        hostSide.moveToNewTaps();
        await hostSide.settle().catch(() => undefined);
        // Nothing can be rolled back, only said plainly.
        const message = `the migration of '${domain.name}' completed (the guest runs in baton-hv pid ${destination?.pid}), but a step after the switch failed: ${(err as Error).message}; the old baton-hv pid ${record.pid} may still exist, stopped (postmigrate) — check ${domainFiles(paths, domain.name).runtime} and the log ${canonical.log}`;
        appendDomainLog(paths, domain.name, message);
        throw new BatonError(MigrateErrorCode.AfterSwitch, message, { domain: domain.name, pid: destination?.pid, oldPid: record.pid });
      }
      destinationClient?.close();
      destinationClient = undefined;
      await hostSide.abandon();
      await discardDestination(destination, files, plans);
      await restoreSourceHandover(source, handoverChanged);
      // Refused before any destination existed: the source was never touched, the error says why.
      if (!migrating && err instanceof BatonError) throw err;
      let sourceNow = 'unknown';
      try {
        sourceNow = (await source.execute<{ status: string }>('query-status', undefined, { timeoutMs: 2000 })).status;
      } catch {
        /* reported as unknown */
      }
      const message = `migration of domain '${domain.name}' failed: ${(err as Error).message}; the domain stays in baton-hv pid ${record.pid} (status ${sourceNow}, its TAP and RAM untouched)${destination ? `, the destination (pid ${destination.pid}) was killed` : ''}`;
      appendDomainLog(paths, domain.name, message);
      throw new BatonError(MigrateErrorCode.Failed, message, {
        domain: domain.name,
        pid: record.pid,
        sourceStatus: sourceNow,
        ...(err instanceof BatonError ? { cause: err.code } : {}),
      });
    } finally {
      source.close();
      destinationClient?.close();
    }
  });
}

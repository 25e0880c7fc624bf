import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { BatonPaths } from '../domain/paths';
import { domainState, DomainStatus, readRuntimeRecord } from '../domain/runtime';
import { DomainStore } from '../domain/store';
import { loggerFor } from '../util/logger';

const log = loggerFor('daemon');

/**
 * Watches the domain store for lifecycle changes made by anyone (this daemon, the CLI, a
 * reaper): the state directory (definitions appear and disappear) and the run directory
 * (runtime records are rewritten atomically). fs.watch only says "something changed";
 * every change, and a periodic rescan that catches what fs.watch misses (directories
 * created later, dropped events, a hypervisor that dies without anyone writing a record),
 * leads to the same thing: read the whole store, diff it against the last snapshot, and
 * emit one event per transition.
 */

/** The lifecycle events of the DomainEvent signal (libvirt's virDomainEventType, by name). */
export type DomainEventName = 'defined' | 'undefined' | 'started' | 'suspended' | 'resumed' | 'stopped' | 'migrated' | 'upgraded';

export interface DomainEvent {
  name: string;
  uuid: string;
  event: DomainEventName;
  detail: string;
}

/**
 * What the watcher remembers of one domain. 'starting' is a record that says
 * paused (starting up): the hypervisor exists but `vm start` has not finished, so neither
 * 'started' nor 'suspended' has happened yet.
 */
type Phase = 'shut off' | 'starting' | 'running' | 'paused';

interface DomainSnapshot {
  uuid: string;
  phase: Phase;
  reason: string;
  pid?: number;
  hypervisorBuild?: string;
}

export const DEFAULT_RESCAN_INTERVAL_MS = 1000;
/**
 * A record that still says running while its hypervisor is gone is what `vm destroy` and
 * `vm shutdown` look like between the process's exit and their shut-off record (and what a
 * crash looks like before the reaper records it). Only after this long is it reported as
 * crashed, so a destroy is not first reported as a crash.
 */
export const INFERRED_CRASH_GRACE_MS = 3000;
/** fs.watch fires several times per atomic write (temp file, rename): rescan once after them. */
const WATCH_SETTLE_MS = 20;

function phaseOf(status: DomainStatus): Phase {
  if (status.state === 'paused' && status.reason === 'starting up') return 'starting';
  return status.state;
}

/**
 * The events that lead from `before` to `after` for one domain (either may be absent).
 * `migrationDetail` describes a move to a new hypervisor process of the same build.
 */
export function transitions(name: string, before: DomainSnapshot | undefined, after: DomainSnapshot | undefined, migrationDetail: () => string): DomainEvent[] {
  const events: DomainEvent[] = [];
  const uuid = after?.uuid ?? before?.uuid ?? '';
  const push = (event: DomainEventName, detail = ''): void => void events.push({ name, uuid, event, detail });
  const was: Phase | 'absent' = before ? before.phase : 'absent';
  const now: Phase | 'absent' = after ? after.phase : 'absent';

  const wasUp = was === 'running' || was === 'paused';
  const nowUp = now === 'running' || now === 'paused';

  if (was === 'absent' && now !== 'absent') push('defined');
  // A domain cannot be undefined while active through the store; should it vanish anyway, report the stop first.
  if ((wasUp || was === 'starting') && (now === 'shut off' || now === 'absent')) push('stopped', after?.reason ?? 'unknown');
  if (nowUp && !wasUp) {
    push('started', after!.reason);
    if (now === 'paused') push('suspended', after!.reason);
  } else if (nowUp && wasUp) {
    if (before!.pid !== after!.pid) {
      if (before!.hypervisorBuild !== after!.hypervisorBuild) push('upgraded', `${before!.hypervisorBuild} -> ${after!.hypervisorBuild}`);
      else push('migrated', migrationDetail());
    }
    if (was === 'running' && now === 'paused') push('suspended', after!.reason);
    if (was === 'paused' && now === 'running') push('resumed', after!.reason);
  }
  if (now === 'absent' && was !== 'absent') push('undefined');
  return events;
}

export class DomainStateWatcher extends EventEmitter {
  private known = new Map<string, DomainSnapshot>();
  private watchers = new Map<string, fs.FSWatcher>();
  private rescanTimer?: NodeJS.Timeout;
  private settleTimer?: NodeJS.Timeout;
  /** Domains this daemon is migrating: their pid change waits for the migration's result. */
  private heldMigrations = new Set<string>();
  private migrationDetails = new Map<string, string>();
  /** When each domain was first seen with a live record but a dead hypervisor. */
  private deadSince = new Map<string, number>();

  constructor(
    private readonly store: DomainStore,
    private readonly rescanIntervalMs = DEFAULT_RESCAN_INTERVAL_MS,
  ) {
    super();
  }

  private get paths(): BatonPaths {
    return this.store.paths;
  }

  /** Takes the current store as the baseline (no events for it) and starts watching. */
  start(): void {
    this.known = this.readAll();
    this.watchDirectories();
    this.rescanTimer = setInterval(() => {
      this.watchDirectories();
      this.rescan();
    }, this.rescanIntervalMs);
  }

  stop(): void {
    if (this.rescanTimer) clearInterval(this.rescanTimer);
    if (this.settleTimer) clearTimeout(this.settleTimer);
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
  }

  /**
   * Called before this daemon migrates `name`: the record's new pid is not reported until
   * `releaseMigration` supplies the detail (policy and pause) only the migration result has.
   */
  holdMigration(name: string): void {
    this.heldMigrations.add(name);
  }

  releaseMigration(name: string, detail?: string): void {
    this.heldMigrations.delete(name);
    if (detail !== undefined) this.migrationDetails.set(name, detail);
    this.rescan();
    this.migrationDetails.delete(name);
  }

  /** Reads every definition and its state, diffs against the last snapshot, emits 'event' per transition. */
  rescan(): void {
    let current: Map<string, DomainSnapshot>;
    try {
      current = this.readAll();
    } catch (err) {
      log.warn(`cannot read the domain store: ${(err as Error).message}`);
      return;
    }
    const names = [...new Set([...this.known.keys(), ...current.keys()])].sort();
    for (const name of names) {
      const before = this.known.get(name);
      let after = current.get(name);
      if (after && before && this.heldMigrations.has(name) && after.pid !== before.pid && before.pid !== undefined && after.pid !== undefined) {
        // Keep the old process in the baseline, so the move is reported once the migration returns.
        after = { ...after, pid: before.pid, hypervisorBuild: before.hypervisorBuild };
        current.set(name, after);
      }
      const detail = (): string => this.migrationDetails.get(name) ?? `pid ${before?.pid} -> ${after?.pid}`;
      for (const event of transitions(name, before, after, detail)) this.emit('event', event);
    }
    this.known = current;
  }

  private readAll(): Map<string, DomainSnapshot> {
    const snapshot = new Map<string, DomainSnapshot>();
    for (const domain of this.store.list()) {
      let status: DomainStatus;
      try {
        status = domainState(this.paths, domain.name);
      } catch (err) {
        // A record being rewritten is replaced atomically, so this is a real problem; keep the last state.
        log.warn((err as Error).message);
        const last = this.known.get(domain.name);
        if (last) snapshot.set(domain.name, last);
        continue;
      }
      const last = this.known.get(domain.name);
      if (this.awaitingStopRecord(domain.name, status) && last) {
        snapshot.set(domain.name, last);
        continue;
      }
      snapshot.set(domain.name, {
        uuid: domain.uuid,
        phase: phaseOf(status),
        reason: status.reason,
        pid: status.active?.pid,
        hypervisorBuild: status.active?.hypervisorBuild,
      });
    }
    return snapshot;
  }

  /** True while a dead hypervisor's record still says active and the grace period has not passed. */
  private awaitingStopRecord(name: string, status: DomainStatus): boolean {
    const inferred = status.state === 'shut off' && status.reason === 'crashed' && readRuntimeRecord(this.paths, name)?.state !== 'shut off';
    if (!inferred) {
      this.deadSince.delete(name);
      return false;
    }
    const since = this.deadSince.get(name) ?? Date.now();
    this.deadSince.set(name, since);
    return Date.now() - since < INFERRED_CRASH_GRACE_MS;
  }

  /** Watches each directory that exists and is not watched yet (they may be created after start). */
  private watchDirectories(): void {
    for (const dir of [this.paths.stateDir, this.paths.runDir]) {
      if (this.watchers.has(dir)) continue;
      try {
        const watcher = fs.watch(dir, { persistent: false }, () => this.scheduleRescan());
        watcher.on('error', () => {
          // The directory went away: forget the watcher; the periodic rescan re-creates it.
          watcher.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, watcher);
      } catch {
        /* not there yet: the periodic rescan covers it and retries the watch */
      }
    }
  }

  private scheduleRescan(): void {
    if (this.settleTimer) return;
    this.settleTimer = setTimeout(() => {
      this.settleTimer = undefined;
      this.rescan();
    }, WATCH_SETTLE_MS);
  }
}

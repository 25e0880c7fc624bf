import dbus from 'dbus-next';
import { DomainStore, listDomains } from '../domain/store';
import { destroyDomain, resumeDomain, shutdownDomain, startDomain, suspendDomain } from '../manager/lifecycle';
import { migrateDomain, NETWORK_POLICIES, NetworkPolicy } from '../manager/migrate';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { DomainEvent, DomainStateWatcher } from './state-watcher';

const log = loggerFor('daemon');

/**
 * Baton's D-Bus API, modelled on libvirt-dbus's org.libvirt.Connect / org.libvirt.Domain but
 * flat: one object whose methods take the domain name. Every method calls the same library
 * function the CLI does, so the daemon and the CLI can be used side by side.
 */
export const DEFAULT_BUS_NAME = 'dev.baton.Manager1';
export const MANAGER_OBJECT_PATH = '/dev/baton/Manager1';
export const MANAGER_INTERFACE = 'dev.baton.Manager1';
/** D-Bus error names are this prefix plus the BatonError code, e.g. dev.baton.Error.ENODOMAIN. */
export const ERROR_PREFIX = 'dev.baton.Error';
const INTERNAL_ERROR_CODE = 'EINTERNAL';

/** The BatonError (or any error) as the D-Bus error a caller receives. */
export function toDBusError(err: unknown): dbus.DBusError {
  const code = err instanceof BatonError ? err.code : INTERNAL_ERROR_CODE;
  // Error name elements allow [A-Za-z0-9_] only and may not start with a digit.
  const element = code.replace(/[^A-Za-z0-9_]/g, '_').replace(/^(\d)/, '_$1') || INTERNAL_ERROR_CODE;
  return new dbus.DBusError(`${ERROR_PREFIX}.${element}`, err instanceof Error ? err.message : String(err));
}

/** Runs a method body, turning its failure into a D-Bus error reply. */
async function asDBusMethod<T>(what: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    log.info(`${what} failed: ${(err as Error).message}`);
    throw toDBusError(err);
  }
}

class ManagerInterface extends dbus.interface.Interface {
  constructor(
    private readonly store: DomainStore,
    private readonly watcher: DomainStateWatcher,
  ) {
    super(MANAGER_INTERFACE);
  }

  /** a(ssss): name, uuid, state (virsh's: running / paused / shut off), reason. */
  ListDomains(): Promise<string[][]> {
    return asDBusMethod('ListDomains', async () => listDomains(this.store, { all: true }).map((d) => [d.name, d.uuid, d.state, d.reason]));
  }

  Start(name: string): Promise<void> {
    return asDBusMethod(`Start ${name}`, async () => void (await startDomain(this.store, name)));
  }

  Shutdown(name: string): Promise<void> {
    return asDBusMethod(`Shutdown ${name}`, async () => void (await shutdownDomain(this.store, name)));
  }

  Destroy(name: string): Promise<void> {
    return asDBusMethod(`Destroy ${name}`, async () => void (await destroyDomain(this.store, name)));
  }

  Suspend(name: string): Promise<void> {
    return asDBusMethod(`Suspend ${name}`, async () => void (await suspendDomain(this.store, name)));
  }

  Resume(name: string): Promise<void> {
    return asDBusMethod(`Resume ${name}`, async () => void (await resumeDomain(this.store, name)));
  }

  /** policy: local-fd, new-tap, netpass, or '' for the definition's. Returns (pause_ms, new_pid). */
  Migrate(name: string, policy: string): Promise<number[]> {
    return asDBusMethod(`Migrate ${name}`, async () => {
      if (policy !== '' && !NETWORK_POLICIES.includes(policy as NetworkPolicy)) {
        throw new BatonError('EUSAGE', `unknown migration policy '${policy}'; use one of ${NETWORK_POLICIES.join(', ')}, or '' for the domain's own`);
      }
      const domainName = this.store.get(name).name;
      this.watcher.holdMigration(domainName);
      let detail: string | undefined;
      try {
        const result = await migrateDomain(this.store, domainName, policy === '' ? {} : { policy: policy as NetworkPolicy });
        detail = `policy=${result.policy} pause_ms=${result.pause_ms}`;
        return [Math.round(result.pause_ms), result.new_pid];
      } finally {
        this.watcher.releaseMigration(domainName, detail);
      }
    });
  }

  /** The signal body; dbus-next sends what this returns. */
  DomainEvent(name: string, uuid: string, event: string, detail: string): string[] {
    return [name, uuid, event, detail];
  }
}

ManagerInterface.configureMembers({
  methods: {
    ListDomains: { outSignature: 'a(ssss)' },
    Start: { inSignature: 's' },
    Shutdown: { inSignature: 's' },
    Destroy: { inSignature: 's' },
    Suspend: { inSignature: 's' },
    Resume: { inSignature: 's' },
    Migrate: { inSignature: 'ss', outSignature: 'uu' },
  },
  signals: {
    DomainEvent: { signature: 'ssss' },
  },
});

export interface DaemonOptions {
  bus: 'session' | 'system';
  /** A bus address (unix:path=...) instead of the standard session/system bus. */
  address?: string;
  busName?: string;
  store?: DomainStore;
  rescanIntervalMs?: number;
}

export interface RunningDaemon {
  busName: string;
  /** Releases the name, stops watching and disconnects. */
  stop(): Promise<void>;
}

/** DBUS_NAME_FLAG_DO_NOT_QUEUE: fail at once rather than wait in line for the name. */
const NAME_FLAG_DO_NOT_QUEUE = 0x4;
const REQUEST_NAME_PRIMARY_OWNER = 1;

/** Connects, exports the manager object, starts watching the store, and takes the name. */
export async function startDaemon(options: DaemonOptions): Promise<RunningDaemon> {
  const store = options.store ?? new DomainStore();
  const busName = options.busName ?? DEFAULT_BUS_NAME;
  const bus =
    options.address !== undefined
      ? dbus.sessionBus({ busAddress: options.address })
      : options.bus === 'system'
        ? dbus.systemBus()
        : dbus.sessionBus();
  // Without a listener, a connection error would be thrown as an unhandled 'error' event.
  const connectionError = new Promise<never>((_, reject) => bus.once('error', reject));
  connectionError.catch(() => undefined);

  const watcher = new DomainStateWatcher(store, options.rescanIntervalMs);
  const manager = new ManagerInterface(store, watcher);
  bus.export(MANAGER_OBJECT_PATH, manager);
  watcher.on('event', (e: DomainEvent) => {
    log.info(`domain ${e.name}: ${e.event}${e.detail ? ` (${e.detail})` : ''}`);
    manager.DomainEvent(e.name, e.uuid, e.event, e.detail);
  });

  let reply: number;
  try {
    reply = await Promise.race([bus.requestName(busName, NAME_FLAG_DO_NOT_QUEUE), connectionError]);
  } catch (err) {
    bus.disconnect();
    const where = options.address ?? `the ${options.bus} bus`;
    throw new BatonError('EDBUS', `cannot take the name ${busName} on ${where}: ${(err as Error).message}; check that the bus runs and its policy lets this user own the name (systemd/dev.baton.Manager1.conf)`);
  }
  if (reply !== REQUEST_NAME_PRIMARY_OWNER) {
    bus.disconnect();
    throw new BatonError('EDBUS', `the name ${busName} is already owned by another process (another 'baton host daemon'?); stop it first`);
  }
  bus.on('error', (err: Error) => log.error(`D-Bus connection error: ${err.message}`));
  watcher.start();
  log.info(`owning ${busName}, object ${MANAGER_OBJECT_PATH}`);

  return {
    busName,
    async stop(): Promise<void> {
      watcher.stop();
      try {
        await bus.releaseName(busName);
      } catch (err) {
        log.warn(`releasing ${busName}: ${(err as Error).message}`);
      }
      bus.disconnect();
    },
  };
}

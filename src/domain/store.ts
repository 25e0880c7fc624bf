import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { removeFileDurably, removeStaleTempFiles, writeFileAtomic } from './atomic';
import { DomainErrorCode } from './errors';
import { withDirectoryLock } from './lock';
import { BatonPaths, batonPaths, domainFiles } from './paths';
import { domainState, DomainStatus, readRuntimeRecord, removeRuntimeRecord } from './runtime';
import { Domain } from './types';
import { normalizeUuid, parseDomainXml, serializeDomainXml } from './xml';

const log = loggerFor('store');

/**
 * The domain store: one `<name>.xml` per defined domain in the state directory, in the
 * canonical form `serializeDomainXml` produces (so `dumpxml` is the file's content).
 * Readers take no lock (every write is an atomic rename); writers serialize on the
 * directory lock, and check conflicts (names, UUIDs, TAPs) while holding it.
 */

export interface DefineResult {
  domain: Domain;
  /** true when a definition with the same name and UUID was replaced (virsh: redefine). */
  replaced: boolean;
}

/** Checks that the kernel and initrd exist and are readable regular files. */
export function checkBootFiles(domain: Domain): void {
  const check = (file: string, where: string, what: string): void => {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(file);
    } catch {
      throw new BatonError(DomainErrorCode.BootFileMissing, `${where}: ${what} '${file}' does not exist; build it or fix the path`, { path: where, file });
    }
    if (!stat.isFile()) throw new BatonError(DomainErrorCode.BootFileMissing, `${where}: ${what} '${file}' is not a regular file`, { path: where, file });
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch {
      throw new BatonError(DomainErrorCode.BootFileMissing, `${where}: ${what} '${file}' is not readable by this user`, { path: where, file });
    }
  };
  check(domain.os.kernel, '/domain/os/kernel', 'kernel');
  if (domain.os.initrd !== undefined) check(domain.os.initrd, '/domain/os/initrd', 'initrd');
}

export class DomainStore {
  constructor(readonly paths: BatonPaths = batonPaths()) {}

  /** Runs `fn` holding the store's write lock (lifecycle code uses it too, e.g. to allocate ids). */
  withLock<T>(fn: () => T | Promise<T>): Promise<T> {
    return withDirectoryLock(this.paths.stateDir, fn);
  }

  private definitionNames(): string[] {
    let entries: string[];
    try {
      entries = fs.readdirSync(this.paths.stateDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new BatonError(DomainErrorCode.StoreIo, `cannot list ${this.paths.stateDir}: ${(err as Error).message}`);
    }
    return entries
      .filter((n) => n.endsWith('.xml') && !n.startsWith('.'))
      .map((n) => n.slice(0, -'.xml'.length))
      .sort();
  }

  /** Reads one stored definition; undefined when there is no file of that name. */
  private load(name: string): Domain | undefined {
    const file = domainFiles(this.paths, name).definition;
    let xml: string;
    try {
      xml = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new BatonError(DomainErrorCode.StoreIo, `cannot read ${file}: ${(err as Error).message}`, { file });
    }
    let domain: Domain;
    try {
      domain = parseDomainXml(xml);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      throw new BatonError(DomainErrorCode.StoreIo, `stored definition ${file} is invalid (${message}); fix or remove the file`, { file });
    }
    if (domain.name !== name) {
      throw new BatonError(DomainErrorCode.StoreIo, `stored definition ${file} names domain '${domain.name}'; the file must be called ${domain.name}.xml`, { file });
    }
    return domain;
  }

  /** Every defined domain, sorted by name. Unreadable files are skipped with a warning. */
  list(): Domain[] {
    const domains: Domain[] = [];
    for (const name of this.definitionNames()) {
      try {
        const domain = this.load(name);
        if (domain) domains.push(domain);
      } catch (err) {
        log.warn(`skipping ${name}.xml: ${(err as Error).message}`);
      }
    }
    return domains;
  }

  /** A domain by name or UUID, or undefined. */
  find(nameOrUuid: string): Domain | undefined {
    const uuid = normalizeUuid(nameOrUuid);
    if (uuid === undefined) {
      // Names never contain '/', so this cannot escape the state directory.
      if (nameOrUuid.includes('/') || nameOrUuid.startsWith('.') || nameOrUuid === '') return undefined;
      return this.load(nameOrUuid);
    }
    return this.list().find((d) => d.uuid === uuid);
  }

  /** A domain by name or UUID; ENODOMAIN when none. */
  get(nameOrUuid: string): Domain {
    const domain = this.find(nameOrUuid);
    if (!domain) {
      throw new BatonError(DomainErrorCode.NoDomain, `domain '${nameOrUuid}' is not defined; 'baton vm list --all' shows the defined domains`, { domain: nameOrUuid });
    }
    return domain;
  }

  /** The definition as XML (what `vm dumpxml` prints). */
  dumpXml(nameOrUuid: string): string {
    return serializeDomainXml(this.get(nameOrUuid));
  }

  /** Running / paused / shut off, with virsh's reason. */
  state(nameOrUuid: string): DomainStatus {
    return domainState(this.paths, this.get(nameOrUuid).name);
  }

  /**
   * Stores a definition. Like libvirt: an existing domain with the same name and UUID is
   * replaced (takes effect at its next start); the same name with another UUID, or the same
   * UUID under another name, is refused. A TAP device may belong to one domain only.
   */
  async define(domain: Domain): Promise<DefineResult> {
    return this.withLock(() => {
      removeStaleTempFiles(this.paths.stateDir);
      let replaced = false;
      for (const other of this.list()) {
        if (other.name === domain.name) {
          if (other.uuid !== domain.uuid) {
            throw new BatonError(
              DomainErrorCode.DomainExists,
              `domain '${domain.name}' already exists with uuid ${other.uuid}; to change it, define XML with that <uuid> (see 'baton vm dumpxml ${domain.name}'), or pick another name`,
              { domain: domain.name, uuid: other.uuid },
            );
          }
          replaced = true;
          continue;
        }
        if (other.uuid === domain.uuid) {
          throw new BatonError(DomainErrorCode.DomainExists, `uuid ${domain.uuid} is already used by domain '${other.name}'; remove <uuid> to get a new one`, {
            domain: other.name,
            uuid: domain.uuid,
          });
        }
        const theirTaps = new Set(other.interfaces.map((nic) => nic.tapName));
        const shared = domain.interfaces.find((nic) => theirTaps.has(nic.tapName));
        if (shared) {
          throw new BatonError(DomainErrorCode.TapInUse, `TAP device '${shared.tapName}' is already used by domain '${other.name}'; give this interface another <target dev>`, {
            tap: shared.tapName,
            domain: other.name,
          });
        }
      }
      writeFileAtomic(domainFiles(this.paths, domain.name).definition, serializeDomainXml(domain));
      log.info(`defined domain ${domain.name}`, { uuid: domain.uuid, replaced });
      return { domain, replaced };
    });
  }

  /** Removes a definition. Refused while the domain runs (see the CLI's undefine help). */
  async undefine(nameOrUuid: string): Promise<Domain> {
    return this.withLock(() => {
      const domain = this.get(nameOrUuid);
      const status = domainState(this.paths, domain.name);
      if (status.state !== 'shut off') {
        throw new BatonError(
          DomainErrorCode.DomainActive,
          `domain '${domain.name}' is ${status.state}; stop it first ('baton vm shutdown ${domain.name}' or 'baton vm destroy ${domain.name}'), then undefine it`,
          { domain: domain.name, state: status.state },
        );
      }
      removeFileDurably(domainFiles(this.paths, domain.name).definition);
      // A shut-off record only explains a past stop; it has no meaning without the definition.
      if (readRuntimeRecord(this.paths, domain.name)) removeRuntimeRecord(this.paths, domain.name);
      log.info(`undefined domain ${domain.name}`, { uuid: domain.uuid });
      return domain;
    });
  }
}

/**
 * `vm define FILE`: reads and parses the file (relative kernel/initrd paths are taken
 * relative to the file's directory), checks the boot files exist, and stores it.
 * Checking the kernel here rather than at start (libvirt checks at start) gives the error
 * while the user still has the file open; start checks again.
 */
export async function defineFromFile(store: DomainStore, file: string): Promise<DefineResult> {
  const absolute = path.resolve(file);
  let xml: string;
  try {
    xml = fs.readFileSync(absolute, 'utf8');
  } catch (err) {
    throw new BatonError(DomainErrorCode.InputUnreadable, `cannot read ${file}: ${(err as Error).message}`, { file });
  }
  const domain = parseDomainXml(xml, { baseDir: path.dirname(absolute) });
  checkBootFiles(domain);
  return store.define(domain);
}

/** One row of `vm list`. */
export interface DomainListEntry {
  /** null while shut off (virsh prints '-'). */
  id: number | null;
  name: string;
  uuid: string;
  state: DomainStatus['state'];
  reason: string;
}

/**
 * `vm list`: active domains ordered by id, then (with `all`) shut-off domains by name,
 * as virsh orders them. A domain whose runtime record cannot be read is listed as shut off
 * with reason 'unknown' and a warning, rather than hiding the whole list.
 */
export function listDomains(store: DomainStore, options: { all?: boolean } = {}): DomainListEntry[] {
  const entries: DomainListEntry[] = store.list().map((domain) => {
    let status: DomainStatus;
    try {
      status = domainState(store.paths, domain.name);
    } catch (err) {
      log.warn((err as Error).message);
      status = { state: 'shut off', reason: 'unknown' };
    }
    return { id: status.id ?? null, name: domain.name, uuid: domain.uuid, state: status.state, reason: status.reason };
  });
  const active = entries.filter((e) => e.id !== null).sort((a, b) => (a.id ?? 0) - (b.id ?? 0));
  const inactive = entries.filter((e) => e.id === null);
  return options.all ? [...active, ...inactive] : active;
}

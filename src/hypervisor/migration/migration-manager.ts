/**
 * The migration state machine behind QMP's migrate / migrate-incoming / query-migrate,
 * with QEMU's status names and MIGRATION events. This transport is `file:` (save
 * and restore); the UNIX-socket local migration plugs its channel in here.
 */
import { BatonError } from '../../util/errors';
import { loggerFor } from '../../util/logger';
import { Vm, RunStatus } from '../vm';
import { ByteSink, ByteSource, FileSink, FileSource } from './byte-channel';
import { restoreVm, saveVm } from './vm-state';

const log = loggerFor('migration');

export type MigrationStatus = 'none' | 'setup' | 'active' | 'device' | 'completed' | 'failed' | 'cancelled';

export interface MigrationInfo {
  status: MigrationStatus;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  ram?: { transferred: number; total: number; remaining: number; duplicate: number; normal: number };
  'error-desc'?: string;
}

export class MigrationManager {
  status: MigrationStatus = 'none';
  capabilities = new Map<string, boolean>([['events', false], ['x-ignore-shared', false], ['return-path', false]]);
  private info: MigrationInfo = { status: 'none' };
  /** `cont` during inmigrate: run once the incoming state is loaded. */
  autostart = false;

  constructor(
    private readonly vm: Vm,
    private readonly emitEvent: (name: string, data?: Record<string, unknown>) => void,
  ) {}

  query(): MigrationInfo {
    return this.info.status === 'none' ? {} as MigrationInfo : { ...this.info };
  }

  private setStatus(status: MigrationStatus): void {
    this.status = status;
    this.info.status = status;
    if (this.capabilities.get('events')) this.emitEvent('MIGRATION', { status });
  }

  private parseUri(uri: string): { kind: 'file' | 'unix' | 'tcp'; target: string } {
    const m = /^(file|unix|tcp):(.+)$/.exec(uri);
    if (!m) throw new BatonError('EMIGRATE', `unsupported migration URI "${uri}" (use file:PATH, unix:PATH or tcp:HOST:PORT)`);
    return { kind: m[1] as 'file' | 'unix' | 'tcp', target: m[2] };
  }

  /** Outgoing: pause, write the state, leave the source in postmigrate. Failure resumes the source. */
  async migrateOut(uri: string): Promise<void> {
    if (['setup', 'active', 'device'].includes(this.status)) throw new BatonError('EMIGRATE', 'There\'s a migration process in progress');
    const { kind, target } = this.parseUri(uri);
    if (kind !== 'file') throw new BatonError('EMIGRATE', `migration over ${kind}: is not supported by this build yet; use file:PATH`);
    const started = Date.now();
    this.info = { status: 'setup' };
    this.setStatus('setup');
    const before: RunStatus = this.vm.status;
    let sink: ByteSink | undefined;
    try {
      sink = new FileSink(target);
      const setupDone = Date.now();
      this.setStatus('active');
      const pauseStart = Date.now();
      this.vm.statusBeforeSave = before;
      await this.vm.pause('finish-migrate', before === 'running');
      this.setStatus('device');
      const r = await saveVm(this.vm, sink, { ramShared: false });
      await sink.close();
      sink = undefined;
      this.vm.setStatus('postmigrate');
      const now = Date.now();
      const total = this.vm.memory.totalSize;
      this.info = {
        status: 'completed', 'total-time': now - started, 'setup-time': setupDone - started, downtime: now - pauseStart,
        ram: { transferred: r.ramBytes, total, remaining: 0, duplicate: (total - r.ramBytes) / 4096, normal: r.ramBytes / 4096 },
      };
      this.setStatus('completed');
    } catch (err) {
      const e = err as Error;
      log.error(`migration to ${uri} failed: ${e.message}`);
      await sink?.close().catch(() => undefined);
      this.info = { status: 'failed', 'error-desc': e.message };
      this.setStatus('failed');
      if (before === 'running') this.vm.resume();
      else this.vm.setStatus(before);
      throw err;
    } finally {
      this.vm.statusBeforeSave = undefined;
    }
  }

  /** Incoming: read a state stream into this (fresh, inmigrate) VM. */
  async migrateIn(uri: string, autostart: boolean): Promise<void> {
    if (this.vm.status !== 'inmigrate') throw new BatonError('EMIGRATE', "The incoming migration has already been started or the VM was not started in incoming mode (-incoming defer)");
    const { kind, target } = this.parseUri(uri);
    if (kind !== 'file') throw new BatonError('EMIGRATE', `incoming migration over ${kind}: is not supported by this build yet; use file:PATH`);
    this.info = { status: 'setup' };
    this.setStatus('setup');
    let src: ByteSource | undefined;
    try {
      src = new FileSource(target);
      this.setStatus('active');
      const { status } = await restoreVm(this.vm, src);
      this.setStatus('completed');
      if ((status === 'running' && autostart) || this.autostart) this.vm.resume();
      else this.vm.setStatus('paused');
    } catch (err) {
      const e = err as Error;
      log.error(`incoming migration from ${uri} failed: ${e.message}`);
      this.info = { status: 'failed', 'error-desc': e.message };
      this.setStatus('failed');
      throw err;
    } finally {
      await src?.close().catch(() => undefined);
    }
  }
}

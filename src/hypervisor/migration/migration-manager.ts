/**
 * The migration state machine behind QMP's migrate / migrate-incoming / query-migrate /
 * migrate_cancel, with QEMU's status names and MIGRATION events.
 *
 * Transports: `file:` (save/restore), `unix:` (migration to a process on this host) and
 * `tcp:` (no fds: RAM copied live, NICs on the destination's own TAPs — to another host).
 * With the `local` parameter on a UNIX socket, guest RAM travels as its memory fd and each
 * NIC's TAP queues as fds (SCM_RIGHTS): nothing is copied and nothing re-plumbed. Local
 * migration over a transport that cannot carry fds is refused before anything pauses.
 *
 * Over `unix:` and `tcp:` the destination answers on the same socket (QEMU's return path):
 *   {ready}  RAM and devices exist: the source may pause now (keeps VM building out of the pause)
 *   {done}   state loaded and the guest resumed there: the source stays stopped (postmigrate)
 *   {error}  the destination failed: the source resumes, TAPs and RAM untouched
 * The source resumes only when it never got `done`.
 */
import { BatonError } from '../../util/errors';
import { loggerFor } from '../../util/logger';
import { trace } from '../../util/trace';
import { Vm, RunStatus } from '../vm';
import { ByteSink, ByteSource, FileSink, FileSource, MigrationChannel } from './byte-channel';
import { RamPrecopy } from './ram-precopy';
import { TcpChannel, parseTcpTarget } from './tcp-channel';
import { UnixChannel } from './unix-channel';
import { NetpassRecorder, decodeCapture, encodeCapture } from '../net/netpass';
import { StreamError, decodeRecord, encodeEnd, encodeRecord, encodeSection } from './stream-format';
import { setThreadPriority } from '../thread-priority';
import { RamTransfer, readSection, rehearseSave, restoreVm, saveDeviceState, saveSetup, saveVm } from './vm-state';

const log = loggerFor('migration');

export type MigrationStatus = 'none' | 'setup' | 'active' | 'device' | 'completed' | 'failed' | 'cancelling' | 'cancelled';

export interface MigrationInfo {
  status: MigrationStatus;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  ram?: { transferred: number; total: number; remaining: number; duplicate: number; normal: number };
  'error-desc'?: string;
}

export interface MigrationParameters {
  local: boolean;
  'downtime-limit': number;
  /** Baton extension: buffer NIC frames during the switchover and replay them on the destination. */
  netpass: boolean;
}

/** What netpass needs from the NICs, without the migration code knowing about virtio. */
export interface NetpassNics {
  /** The TAP queues to read on the source while the VM is paused. */
  sources(): { id: string; fds: number[] }[];
  /** Destination: hold (or release) TAP reads until the replay is queued. */
  hold(on: boolean): void;
  /** Deliver frames to the NIC on netdev `id`, ahead of newer ones. */
  replay(id: string, queues: Buffer[][]): void;
}

export interface MigrationHooks {
  /** After a completed outgoing local migration: hand the TAP queues over for good. */
  onLocalHandoverComplete?(): void;
  netpass?: NetpassNics;
  /** Holds the monitor's events until the returned function runs: a client woken inside the switchover takes a core from it. */
  holdEvents?(): () => void;
}

/** How long the destination keeps its switchover priority after the guest resumed there (first frames, the source's retirement). */
const SETTLE_MS = 200;

/** How long a destination waits for the netpass frames before giving up on them (never on the migration). */
const NETPASS_WAIT_MS = 3000;

interface Reply { ready?: boolean; done?: boolean; error?: string }

const REPLY_MAX = 64 * 1024;

async function sendReply(ch: MigrationChannel, reply: Reply): Promise<void> {
  const json = Buffer.from(JSON.stringify(reply), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  await ch.write([len, json]);
}

async function readReply(ch: MigrationChannel, waitingFor: string): Promise<Reply> {
  let body: Buffer;
  try {
    const len = (await ch.read(4, `destination reply (${waitingFor})`)).readUInt32LE(0);
    if (len > REPLY_MAX) throw new BatonError('EMIGRATE', `destination reply of ${len} bytes is implausible (is ${ch.description} a baton-hv destination?)`);
    body = await ch.read(len, `destination reply (${waitingFor})`);
  } catch (err) {
    if (err instanceof BatonError && err.code === 'EMIGRATE') throw err;
    throw new BatonError('EMIGRATE', `the destination went away before its "${waitingFor}" reply: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(body.toString('utf8')) as Reply;
  } catch {
    throw new BatonError('EMIGRATE', `destination reply on ${ch.description} is not valid JSON (is it a baton-hv destination?)`);
  }
}

function parseUri(uri: string): { kind: 'file' | 'unix' | 'tcp'; target: string } {
  const m = /^(file|unix|tcp):(.+)$/.exec(uri);
  if (!m) throw new BatonError('EMIGRATE', `unsupported migration URI "${uri}" (use unix:PATH, file:PATH or tcp:HOST:PORT)`);
  return { kind: m[1] as 'file' | 'unix' | 'tcp', target: m[2] };
}

export class MigrationManager {
  status: MigrationStatus = 'none';
  readonly capabilities = new Map<string, boolean>([['events', false], ['x-ignore-shared', false], ['return-path', false]]);
  readonly parameters: MigrationParameters = { local: false, 'downtime-limit': 300, netpass: false };
  /** `cont` during inmigrate: run once the incoming state is loaded. */
  autostart = false;
  private info: MigrationInfo = { status: 'none' };
  private channel?: MigrationChannel;
  /** The incoming migration's channel (closed if the hypervisor quits; migrate_cancel is for outgoing ones). */
  private incoming?: MigrationChannel;
  private cancelRequested = false;
  /** Aborts an incoming migration still waiting for its source (the hypervisor quits). */
  private readonly closing = new AbortController();

  constructor(
    private readonly vm: Vm,
    private readonly emitEvent: (name: string, data?: Record<string, unknown>) => void,
    private readonly hooks: MigrationHooks = {},
  ) {}

  query(): Partial<MigrationInfo> {
    return this.info.status === 'none' ? {} : { ...this.info };
  }

  private setStatus(status: MigrationStatus): void {
    this.status = status;
    this.info.status = status;
    if (this.capabilities.get('events')) this.emitEvent('MIGRATION', { status });
  }

  private get inProgress(): boolean {
    return ['setup', 'active', 'device', 'cancelling'].includes(this.status);
  }

  /** How RAM goes for this migration, decided before anything pauses. */
  private ramTransfer(kind: 'file' | 'unix' | 'tcp'): RamTransfer {
    if (this.vm.config.memory.backing === 'file' && kind === 'unix' && (this.parameters.local || this.capabilities.get('x-ignore-shared'))) return 'file';
    if (this.parameters.local && kind === 'unix') return 'fd';
    return 'copy';
  }

  /** Checks that can fail without side effects: the caller gets them as the command's error. */
  checkOutgoing(uri: string): void {
    if (this.inProgress) throw new BatonError('EMIGRATE', "There's a migration process in progress");
    if (this.vm.status !== 'running' && this.vm.status !== 'paused') {
      throw new BatonError('EMIGRATE', `cannot migrate a VM whose status is ${this.vm.status}`);
    }
    const { kind, target } = parseUri(uri);
    if (this.parameters.local && kind !== 'unix') {
      throw new BatonError('EMIGRATE', `local migration passes file descriptors and needs a UNIX domain socket; ${kind}: cannot carry them (use unix:PATH)`);
    }
    if (kind === 'tcp') parseTcpTarget(target);
  }

  /** Outgoing migration; resolves when it ended (completed, failed or cancelled). */
  async migrateOut(uri: string): Promise<void> {
    this.checkOutgoing(uri);
    const { kind, target } = parseUri(uri);
    const ram = this.ramTransfer(kind);
    const started = Date.now();
    this.info = { status: 'setup' };
    this.cancelRequested = false;
    this.setStatus('setup');
    const before: RunStatus = this.vm.status;
    let paused = false;
    let destinationRunning = false;
    let sink: ByteSink | undefined;
    const netpass = kind !== 'file' && this.parameters.netpass && this.hooks.netpass ? this.hooks.netpass : undefined;
    let recorder: NetpassRecorder | undefined;
    let precopy: RamPrecopy | undefined;
    let releaseEvents: (() => void) | undefined;
    try {
      let sections = 0;
      if (kind !== 'file') {
        trace('migrate-out: connect');
        const ch = kind === 'unix' ? UnixChannel.connect(target) : await TcpChannel.connect(target);
        this.channel = ch;
        if (this.cancelRequested) throw new BatonError('EMIGRATE', 'migration cancelled');
        sink = ch;
        sections = await saveSetup(this.vm, ch, { ram, withFds: true, netpass: !!netpass });
        trace('migrate-out: setup sent');
        // While the destination sets up: the device-state save, minus vCPUs and fds, so the
        // pause runs it warm.
        rehearseSave(this.vm, this.parameters.local);
        trace('migrate-out: save rehearsed');
        const r = await readReply(ch, 'ready');
        trace('migrate-out: destination ready');
        if (!r.ready) throw new BatonError('EMIGRATE', `destination failed during setup: ${r.error ?? 'no ready signal'}`);
      } else {
        sink = new FileSink(target);
      }
      const setupDone = Date.now();
      this.checkCancelled();
      this.setStatus('active');
      if (kind !== 'file' && ram === 'copy') {
        // RAM without shared memory goes while the guest runs; only its last dirty pages pause it.
        precopy = new RamPrecopy(this.vm, sink);
        await precopy.live();
        this.checkCancelled();
      }
      const pauseStart = Date.now();
      trace('migrate-out: pause');
      releaseEvents = this.hooks.holdEvents?.();
      setThreadPriority('switchover');
      this.vm.statusBeforeSave = before;
      await this.vm.pause('finish-migrate', before === 'running');
      paused = true;
      trace('migrate-out: paused');
      if (netpass) recorder = new NetpassRecorder(netpass.sources());
      this.checkCancelled();
      this.setStatus('device');
      let ramBytes: number;
      if (kind !== 'file') {
        const ch = sink as MigrationChannel;
        if (precopy) await precopy.final();
        ramBytes = (await saveDeviceState(this.vm, ch, { ram, withFds: this.parameters.local, netpass: !!netpass, ramSent: !!precopy },
          sections + (precopy?.sections ?? 0))).ramBytes + (precopy?.bytesSent ?? 0);
        trace('migrate-out: device state sent');
        releaseEvents?.();
        // The guest is the destination's now: this end's remaining work must not delay it.
        setThreadPriority('background');
        const r = await readReply(ch, 'done');
        trace('migrate-out: destination done');
        if (!r.done) throw new BatonError('EMIGRATE', `destination failed to load the state: ${r.error ?? 'no answer'}`);
        destinationRunning = true;
        if (recorder) await this.sendNetpass(ch, recorder);
      } else {
        ramBytes = (await saveVm(this.vm, sink, { ram: 'copy', withFds: false })).ramBytes;
      }
      await sink.close();
      sink = undefined;
      const now = Date.now();
      this.vm.setStatus('postmigrate');
      if (kind === 'unix' && this.parameters.local) this.hooks.onLocalHandoverComplete?.();
      const total = this.vm.memory.totalSize;
      this.info = {
        status: 'completed', 'total-time': now - started, 'setup-time': setupDone - started, downtime: now - pauseStart,
        ram: { transferred: ramBytes, total, remaining: 0, duplicate: (total - ramBytes) / 4096, normal: ramBytes / 4096 },
      };
      this.setStatus('completed');
    } catch (err) {
      const e = err as Error;
      const cancelled = this.cancelRequested;
      log.error(`migration to ${uri} ${cancelled ? 'cancelled' : 'failed'}: ${e.message}`);
      try { precopy?.stop(); } catch { /* the VM's memory slots stay as they were */ }
      await sink?.close().catch(() => undefined);
      this.info = cancelled ? { status: 'cancelled' } : { status: 'failed', 'error-desc': e.message };
      this.setStatus(cancelled ? 'cancelled' : 'failed');
      if (!destinationRunning) {
        // Frames read during the attempt belong to this guest again.
        if (recorder && netpass) for (const [id, queues] of recorder.stop().frames) netpass.replay(id, queues);
        if (paused && before === 'running') this.vm.resume();
        else if (paused) this.vm.setStatus(before);
      }
      throw err;
    } finally {
      releaseEvents?.();
      setThreadPriority('normal');
      this.vm.statusBeforeSave = undefined;
      this.channel = undefined;
    }
  }

  /** After the destination runs: the buffered frames, then an end marker. Failure costs frames, not the migration. */
  private async sendNetpass(ch: MigrationChannel, recorder: NetpassRecorder): Promise<void> {
    const capture = recorder.stop();
    try {
      let n = 0;
      for (const [id, queues] of capture.frames) {
        const { head, blobs } = encodeCapture(queues);
        await ch.write(encodeSection(`netpass/${id}`, 1, encodeRecord(head, blobs)));
        n++;
      }
      await ch.write([encodeEnd(n)]);
      log.info(`netpass: sent ${capture.frameCount} frame(s), ${capture.bytes} bytes` + (capture.dropped ? `, ${capture.dropped} dropped over the buffer limit` : ''));
    } catch (err) {
      log.warn(`netpass: ${capture.frameCount} buffered frame(s) could not be sent: ${(err as Error).message}`);
    }
  }

  /** Destination side of netpass: frames arrive after {done}; the NICs hold TAP reads until then. */
  private async receiveNetpass(ch: MigrationChannel): Promise<void> {
    const netpass = this.hooks.netpass;
    if (!netpass) return;
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StreamError(`no netpass frames within ${NETPASS_WAIT_MS} ms`, 'netpass')), NETPASS_WAIT_MS);
      });
      await Promise.race([timeout, (async () => {
        for (;;) {
          const s = await readSection(ch, 'netpass');
          if ('end' in s) break;
          const rec = decodeRecord(s.name, s.payload);
          const queues = decodeCapture(rec.head as { queues: number[][] }, (name) => rec.blobs.get(name) ?? Buffer.alloc(0));
          netpass.replay(s.name.slice('netpass/'.length), queues);
        }
      })()]);
    } catch (err) {
      log.warn(`netpass: buffered frames lost: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
      netpass.hold(false);
    }
  }

  private checkCancelled(): void {
    if (this.cancelRequested) throw new BatonError('EMIGRATE', 'migration cancelled');
  }

  /** migrate_cancel: stops an outgoing migration at its next step; the source keeps running. */
  cancel(): void {
    if (!this.inProgress || this.status === 'device') return; // past the point of no return: let it finish
    this.cancelRequested = true;
    this.setStatus('cancelling');
    void this.channel?.close();
  }

  /** The hypervisor quits: stop listening for a source, drop a channel still open. */
  close(): void {
    this.closing.abort();
    void this.channel?.close();
    void this.incoming?.close();
  }

  /** Incoming: read a state stream into this (fresh, inmigrate) VM. */
  async migrateIn(uri: string, autostart: boolean, onListening?: () => void): Promise<void> {
    if (this.vm.status !== 'inmigrate' || this.inProgress) {
      throw new BatonError('EMIGRATE', 'The incoming migration has already been started or the VM was not started in incoming mode (-incoming defer)');
    }
    const { kind, target } = parseUri(uri);
    if (kind === 'tcp') parseTcpTarget(target);
    this.info = { status: 'setup' };
    this.setStatus('setup');
    let src: ByteSource | undefined;
    let ch: MigrationChannel | undefined;
    let releaseEvents: (() => void) | undefined;
    try {
      if (kind !== 'file') {
        ch = kind === 'unix'
          ? await UnixChannel.acceptOne(target, onListening, this.closing.signal)
          : await TcpChannel.acceptOne(target, onListening, this.closing.signal);
        this.incoming = ch;
        src = ch;
      } else {
        onListening?.();
        src = new FileSource(target);
      }
      const channel = ch;
      const { status, netpass } = await restoreVm(this.vm, src, {
        onSetupDone: async () => {
          this.setStatus('active');
          // Before 'ready': the source pauses at once and its state must find this thread up.
          setThreadPriority('switchover');
          if (channel) await sendReply(channel, { ready: true });
          trace('migrate-in: ready sent');
          releaseEvents = this.hooks.holdEvents?.(); // the switchover comes next
        },
      });
      const waitNetpass = netpass && ch !== undefined && this.hooks.netpass !== undefined;
      if (waitNetpass) this.hooks.netpass?.hold(true);
      trace('migrate-in: state loaded');
      if ((status === 'running' && autostart) || this.autostart) this.vm.resume();
      else this.vm.setStatus('paused');
      if (ch) await sendReply(ch, { done: true });
      trace('migrate-in: done sent');
      releaseEvents?.();
      setTimeout(() => setThreadPriority('normal'), SETTLE_MS).unref();
      this.info = { status: 'completed' };
      this.setStatus('completed');
      if (waitNetpass && ch) await this.receiveNetpass(ch);
    } catch (err) {
      const e = err as Error;
      setThreadPriority('normal');
      log.error(`incoming migration from ${uri} failed: ${e.message}`);
      if (ch) await sendReply(ch, { error: e.message }).catch(() => undefined);
      this.info = { status: 'failed', 'error-desc': e.message };
      this.setStatus('failed');
      throw err;
    } finally {
      releaseEvents?.();
      this.incoming = undefined;
      await src?.close().catch(() => undefined);
    }
  }
}

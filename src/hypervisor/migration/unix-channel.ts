/**
 * A migration channel over a UNIX stream socket, the one transport that can carry file
 * descriptors (SCM_RIGHTS): guest RAM's memfd and the TAP queues travel beside the state
 * stream. Non-blocking, driven by fd readiness on the event loop. Fds received are queued
 * in arrival order; each section that expects fds takes them from the queue.
 */
import fs from 'node:fs';
import { native } from '../../native';
import type { FdWatch } from '../../native/io';
import { BatonError } from '../../util/errors';
import { MigrationChannel } from './byte-channel';
import { ReceiveQueue } from './receive-queue';
import { StreamError } from './stream-format';

const READ_CHUNK = 256 * 1024;
const MAX_FDS_PER_READ = 64;
const COALESCE_MAX = 256 * 1024;

export class UnixChannel implements MigrationChannel {
  private readonly received: ReceiveQueue;
  private readonly fds: number[] = [];
  private writeWaiter?: () => void;
  private readonly watch: FdWatch;
  private closed = false;

  constructor(readonly fd: number, readonly description: string) {
    this.received = new ReceiveQueue(description);
    this.watch = native.fdWatch(fd, 'r', (readable, writable) => {
      if (readable) this.pump();
      if (writable && this.writeWaiter) {
        const w = this.writeWaiter;
        this.writeWaiter = undefined;
        this.watch.update('r');
        w();
      }
    });
  }

  /** Connects to a destination listening on `path`. */
  static connect(path: string): UnixChannel {
    try {
      return new UnixChannel(native.unixConnect(path), `unix:${path}`);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new BatonError('EMIGRATE', `cannot connect to the migration destination unix:${path} (${e.code}): is the destination listening (migrate-incoming)?`);
    }
  }

  /**
   * Listens on `path` and resolves with the first connection (the source); the listener
   * closes then, or when `signal` aborts (the hypervisor quits while waiting).
   */
  static async acceptOne(path: string, onListening?: () => void, signal?: AbortSignal): Promise<UnixChannel> {
    try { fs.unlinkSync(path); } catch { /* no stale socket */ }
    const listenFd = native.unixListen(path, 1);
    fs.chmodSync(path, 0o600);
    onListening?.();
    return new Promise((resolve, reject) => {
      const stopListening = () => {
        w.stop();
        native.close(listenFd);
        signal?.removeEventListener('abort', onAbort);
        try { fs.unlinkSync(path); } catch { /* gone */ }
      };
      const onAbort = () => {
        stopListening();
        reject(new BatonError('EMIGRATE', `stopped waiting for the incoming migration on unix:${path}`));
      };
      const w = native.fdWatch(listenFd, 'r', () => {
        let fd: number;
        try {
          fd = native.unixAccept(listenFd);
        } catch (err) {
          stopListening();
          reject(err);
          return;
        }
        if (fd < 0) return;
        stopListening();
        resolve(new UnixChannel(fd, `unix:${path}`));
      });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private pump(): void {
    for (;;) {
      let msg: { data: Buffer; fds: number[] } | null;
      try {
        msg = native.recvmsgFds(this.fd, READ_CHUNK, MAX_FDS_PER_READ);
      } catch (err) {
        this.received.fail(err as Error);
        return;
      }
      if (msg === null) break;
      this.fds.push(...msg.fds);
      if (msg.data.length === 0) {
        this.watch.stop();
        this.received.end();
        return;
      }
      this.received.push(msg.data);
    }
    this.received.wake(); // fds may have come without bytes
  }

  read(n: number, section: string): Promise<Buffer> {
    return this.received.read(n, section);
  }

  /** Waits until at least `count` fds arrived and takes the oldest `count`. */
  async takeFds(count: number, section: string): Promise<number[]> {
    while (this.fds.length < count) {
      if (this.received.done) throw new StreamError(`expected ${count} file descriptor(s), ${this.fds.length} arrived`, section);
      await this.received.next();
    }
    return this.fds.splice(0, count);
  }

  async write(chunks: Buffer[]): Promise<void> {
    // Small pieces (a section's head, payload and checksum) go out as one message.
    const total = chunks.reduce((n, c) => n + c.length, 0);
    if (chunks.length > 1 && total <= COALESCE_MAX) {
      await this.send(Buffer.concat(chunks, total), []);
      return;
    }
    for (const c of chunks) await this.send(c, []);
  }

  async writeWithFds(chunk: Buffer, fds: number[]): Promise<void> {
    await this.send(chunk, fds);
  }

  private async send(data: Buffer, fds: number[]): Promise<void> {
    let off = 0;
    let pendingFds = fds;
    while (off < data.length) {
      if (this.closed) throw new BatonError('EMIGRATE', `migration channel ${this.description} is closed`);
      let n: number;
      try {
        n = native.sendmsgFds(this.fd, off === 0 ? data : data.subarray(off), pendingFds);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        throw new BatonError('EMIGRATE', `sending on ${this.description} failed (${e.code}): the destination went away`);
      }
      if (n < 0) {
        await new Promise<void>((resolve) => {
          this.writeWaiter = resolve;
          this.watch.update('rw');
        });
        continue;
      }
      pendingFds = []; // fds travel with the first byte sent
      off += n;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watch.stop();
    for (const fd of this.fds.splice(0)) { try { native.close(fd); } catch { /* closed */ } }
    try { native.close(this.fd); } catch { /* closed */ }
    this.received.end();
  }
}

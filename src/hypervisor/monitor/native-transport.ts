/**
 * The monitor transport on the native addon's UNIX sockets: every recvmsg delivers the
 * SCM_RIGHTS fds that came with its bytes, so `getfd` (and any command that takes fds)
 * works as with QEMU. Same contract as {@link NetMonitorTransport} (see transport.ts).
 *
 * Each connection is one non-blocking socket fd with one libuv poll watch: readable while
 * the connection is open, writable too while output waits in the queue.
 */
import fs from 'node:fs';
import { closeQuietly, native } from '../../native';
import type { FdWatch } from '../../native/io';
import { BatonError } from '../../util/errors';
import { MONITOR_SOCKET_MODE, removeStaleSocket, setUmask, type MonitorConnection, type MonitorConnectionHandlers, type MonitorTransport } from './transport';

/** Bytes asked of one recvmsg; a QMP command is far smaller, a long stream comes in turns. */
const RECV_CHUNK_BYTES = 64 * 1024;
/** A connection being closed gets this long to flush its output to a peer that does not read. */
const CLOSE_FLUSH_TIMEOUT_MS = 2000;
const LISTEN_BACKLOG = 16;

interface QueuedWrite {
  data: Buffer;
  /** Bytes of `data` already sent. */
  sent: number;
  done?: () => void;
}

class NativeMonitorConnection implements MonitorConnection {
  readonly description: string;
  private watch?: FdWatch;
  private handlers?: MonitorConnectionHandlers;
  private readonly queue: QueuedWrite[] = [];
  private queuedBytes = 0;
  private closing = false;
  private closed = false;

  constructor(private readonly fd: number, sequence: number) {
    let peer = '';
    try {
      const cred = native.peerCred(fd);
      peer = ` pid ${cred.pid} uid ${cred.uid}`;
    } catch {
      // not every socket has credentials to show; the sequence number still names it
    }
    this.description = `unix-client-${sequence}${peer}`;
  }

  start(handlers: MonitorConnectionHandlers): void {
    this.handlers = handlers;
    if (this.closed) {
      handlers.onClose();
      return;
    }
    this.watch = native.fdWatch(this.fd, this.wantedEvents(), (readable, writable) => {
      if (writable) this.flush();
      if (readable && !this.closed) this.readAvailable();
    });
  }

  write(data: Buffer, done?: () => void): void {
    if (this.closed) {
      done?.();
      return;
    }
    this.queue.push({ data, sent: 0, done });
    this.queuedBytes += data.length;
    this.flush();
  }

  pendingWriteBytes(): number {
    return this.queuedBytes;
  }

  close(): void {
    if (this.closed) return;
    this.closing = true;
    if (this.queue.length === 0) {
      this.finish();
      return;
    }
    // Still sending: finish() runs once the queue drains, or when the peer never reads.
    setTimeout(() => this.finish(), CLOSE_FLUSH_TIMEOUT_MS).unref();
  }

  destroy(): void {
    this.finish();
  }

  /** Reads until the socket is empty; the fds of each message go with its bytes. */
  private readAvailable(): void {
    for (;;) {
      let message: { data: Buffer; fds: number[] } | null;
      try {
        message = native.recvmsgFds(this.fd, RECV_CHUNK_BYTES, native.maxFdsPerMessage);
      } catch {
        // ECONNRESET and the like end the connection like EOF; EMSGSIZE (more fds than
        // SCM_RIGHTS carries) cannot happen at maxFdsPerMessage, and would be a hostile peer.
        this.finish();
        return;
      }
      if (message === null) return; // EAGAIN: wait for the next readable
      if (message.data.length === 0) {
        for (const fd of message.fds) closeQuietly(fd);
        this.finish(); // EOF
        return;
      }
      this.handlers?.onData(message.data, message.fds);
      if (this.closed) return;
    }
  }

  /** Sends what the kernel takes now; keeps the rest for the next writable. */
  private flush(): void {
    while (this.queue.length > 0 && !this.closed) {
      const head = this.queue[0];
      let n: number;
      try {
        n = native.sendmsgFds(this.fd, head.data.subarray(head.sent), []);
      } catch {
        // EPIPE / ECONNRESET: the peer went away; what is queued can never be sent.
        this.finish();
        return;
      }
      if (n < 0) break; // EAGAIN
      head.sent += n;
      this.queuedBytes -= n;
      if (head.sent < head.data.length) continue;
      this.queue.shift();
      head.done?.();
    }
    if (this.closed) return;
    if (this.closing && this.queue.length === 0) {
      this.finish();
      return;
    }
    this.watch?.update(this.wantedEvents());
  }

  private wantedEvents(): 'r' | 'rw' {
    return this.queue.length > 0 ? 'rw' : 'r';
  }

  /** Closes the socket once and tells the server once; queued output is dropped (its callbacks still run). */
  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch?.stop();
    this.watch = undefined;
    closeQuietly(this.fd);
    const dropped = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const w of dropped) w.done?.();
    this.handlers?.onClose();
  }
}

/** UNIX stream socket through the native addon: fds sent with SCM_RIGHTS reach the commands. */
export class NativeMonitorTransport implements MonitorTransport {
  private listenFd = -1;
  private watch?: FdWatch;
  private path?: string;
  private sequence = 0;

  async listen(path: string, onConnection: (connection: MonitorConnection) => void): Promise<void> {
    if (this.listenFd >= 0) throw new Error(`monitor transport already listens on ${this.path}`);
    await removeStaleSocket(path);
    // bind() happens inside unixListen: a umask around it makes the socket 0600 from
    // birth, so no client can connect in a window before the chmod below.
    const previousUmask = setUmask(0o177);
    let fd: number;
    try {
      fd = native.unixListen(path, LISTEN_BACKLOG);
    } catch (err) {
      throw new BatonError('MONITOR_LISTEN_FAILED', `cannot listen on monitor socket ${path}: ${(err as Error).message}`);
    } finally {
      if (previousUmask !== undefined) setUmask(previousUmask);
    }
    fs.chmodSync(path, MONITOR_SOCKET_MODE); // for worker threads, where umask cannot be set
    this.listenFd = fd;
    this.path = path;
    this.watch = native.fdWatch(fd, 'r', () => {
      for (;;) {
        let client: number;
        try {
          client = native.unixAccept(fd);
        } catch {
          return; // ECONNABORTED, EMFILE...: try again on the next readable
        }
        if (client < 0) return;
        onConnection(new NativeMonitorConnection(client, ++this.sequence));
      }
    });
  }

  async close(): Promise<void> {
    if (this.listenFd < 0) return;
    this.watch?.stop();
    this.watch = undefined;
    closeQuietly(this.listenFd);
    this.listenFd = -1;
    if (this.path) fs.rmSync(this.path, { force: true });
  }
}

/**
 * How monitor bytes (and, later, fds) reach the QMP server. The server only sees these
 * interfaces, so a transport built on the native addon's recvmsg (which delivers SCM_RIGHTS
 * fds with the bytes) can replace the Node `net` one without touching the protocol code.
 *
 * Contract for implementations:
 *  - `listen` creates the UNIX socket at `path` with mode 0600; a stale socket file (one
 *    nobody listens on) is removed first; a live one is an error.
 *  - each accepted connection is handed to `onConnection` before any byte is read; reading
 *    starts when the server calls `start`.
 *  - `onData(data, fds)`: fds are those received with these bytes (always [] on `net`);
 *    the server owns them from then on.
 *  - `onClose` is called exactly once, whether the peer or the server closed.
 */
import fs from 'node:fs';
import net from 'node:net';
import { BatonError } from '../../util/errors';

export interface MonitorConnectionHandlers {
  onData(data: Buffer, fds: number[]): void;
  onClose(): void;
}

export interface MonitorConnection {
  /** Starts delivering data; called once by the server. */
  start(handlers: MonitorConnectionHandlers): void;
  /** Queues bytes for the peer; `done` runs once they were handed to the kernel (or could not be). */
  write(data: Buffer, done?: () => void): void;
  /** Bytes queued but not yet sent (for backpressure on slow readers). */
  pendingWriteBytes(): number;
  /** Sends what is queued, then closes. */
  close(): void;
  /** Closes at once, dropping anything queued. */
  destroy(): void;
  /** For logs: who is on the other end, as far as the transport knows. */
  readonly description: string;
}

export interface MonitorTransport {
  listen(path: string, onConnection: (connection: MonitorConnection) => void): Promise<void>;
  /** Stops accepting; does not close connections (the server does). Removes the socket file. */
  close(): Promise<void>;
}

export const MONITOR_SOCKET_MODE = 0o600;

/**
 * Removes a socket file left by a dead process. Refuses to remove anything that is not a
 * socket, or a socket someone still listens on.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) {
    throw new BatonError('MONITOR_PATH_NOT_SOCKET', `monitor path ${path} exists and is not a socket; remove it or choose another path`);
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) {
    throw new BatonError('MONITOR_SOCKET_IN_USE', `monitor socket ${path} is in use by another process; stop it or choose another path`);
  }
  fs.unlinkSync(path);
}

class NetMonitorConnection implements MonitorConnection {
  readonly description: string;

  constructor(
    private readonly socket: net.Socket,
    sequence: number,
  ) {
    this.description = `unix-client-${sequence}`;
    socket.pause();
  }

  start(handlers: MonitorConnectionHandlers): void {
    let closed = false;
    const closeOnce = (): void => {
      if (closed) return;
      closed = true;
      handlers.onClose();
    };
    this.socket.on('data', (data: Buffer) => handlers.onData(data, []));
    this.socket.on('close', closeOnce);
    // A peer vanishing mid-write (EPIPE, ECONNRESET) is an ordinary end of the connection.
    this.socket.on('error', () => this.socket.destroy());
    this.socket.resume();
  }

  write(data: Buffer, done?: () => void): void {
    if (this.socket.destroyed || this.socket.writableEnded) {
      done?.();
      return;
    }
    this.socket.write(data, done ? () => done() : undefined);
  }

  pendingWriteBytes(): number {
    return this.socket.writableLength;
  }

  close(): void {
    this.socket.end();
    // end() waits for the peer to read; do not let a stuck peer keep the fd forever.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** UNIX stream socket through Node's `net`: no fd passing (getfd answers "No file descriptor supplied"). */
export class NetMonitorTransport implements MonitorTransport {
  private server?: net.Server;
  private path?: string;
  private sequence = 0;

  async listen(path: string, onConnection: (connection: MonitorConnection) => void): Promise<void> {
    if (this.server) throw new Error(`monitor transport already listens on ${this.path}`);
    await removeStaleSocket(path);
    const server = net.createServer({ pauseOnConnect: true }, (socket) => {
      onConnection(new NetMonitorConnection(socket, ++this.sequence));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new BatonError('MONITOR_LISTEN_FAILED', `cannot listen on monitor socket ${path}: ${err.message}`)),
      );
      // bind() happens synchronously inside listen(): a umask set around it makes the
      // socket 0600 from birth, so no client can connect in a window before chmod.
      const previousUmask = setUmask(0o177);
      try {
        server.listen(path, () => resolve());
      } finally {
        if (previousUmask !== undefined) setUmask(previousUmask);
      }
    });
    fs.chmodSync(path, MONITOR_SOCKET_MODE); // for worker threads, where umask cannot be set
    this.server = server;
    this.path = path;
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    // close()'s callback waits for every connection to end; the server closes those itself,
    // so only the listening handle matters here. libuv unlinks the socket file with it;
    // remove it anyway, without failing if it is gone.
    server.close();
    if (this.path) fs.rmSync(this.path, { force: true });
  }
}

/** Sets the umask (to create a socket file owner-only); undefined where it cannot be changed. */
export function setUmask(mask: number): number | undefined {
  try {
    return process.umask(mask);
  } catch {
    return undefined; // worker threads cannot change the umask
  }
}

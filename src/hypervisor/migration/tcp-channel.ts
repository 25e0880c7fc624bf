/**
 * A migration channel over TCP (`tcp:HOST:PORT`): the stream and the destination's replies,
 * no fds — so RAM is copied (live, ram-precopy.ts) and each NIC keeps to the TAP its own
 * netdev opened. This is the transport a migration to another host takes.
 */
import net from 'node:net';
import { BatonError } from '../../util/errors';
import { MigrationChannel } from './byte-channel';
import { ReceiveQueue } from './receive-queue';

/** `HOST:PORT` or `[IPv6]:PORT`, as QEMU writes them. */
export function parseTcpTarget(target: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(target);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) {
    throw new BatonError('EMIGRATE', `bad tcp: migration address "${target}" (use tcp:HOST:PORT or tcp:[IPv6]:PORT, port 1-65535)`);
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export class TcpChannel implements MigrationChannel {
  private readonly received: ReceiveQueue;
  private closed = false;

  private constructor(private readonly socket: net.Socket, readonly description: string) {
    this.received = new ReceiveQueue(description);
    // The replies are a few bytes each and the pause waits on them.
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.received.push(chunk));
    socket.on('end', () => this.received.end());
    socket.on('error', (err) => this.received.fail(err));
    socket.on('close', () => this.received.end());
  }

  static async connect(target: string): Promise<TcpChannel> {
    const { host, port } = parseTcpTarget(target);
    const description = `tcp:${target}`;
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.once('connect', () => {
        socket.removeAllListeners('error');
        resolve(new TcpChannel(socket, description));
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        socket.destroy();
        reject(new BatonError('EMIGRATE', `cannot connect to the migration destination ${description} (${err.code}): is the destination listening (migrate-incoming)?`));
      });
    });
  }

  /**
   * Listens on `target` and resolves with the first connection (the source); the listener
   * closes then, or when `signal` aborts (the hypervisor quits while waiting).
   */
  static async acceptOne(target: string, onListening?: () => void, signal?: AbortSignal): Promise<TcpChannel> {
    const { host, port } = parseTcpTarget(target);
    const description = `tcp:${target}`;
    const server = net.createServer({ noDelay: true });
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        server.close();
        reject(new BatonError('EMIGRATE', `stopped waiting for the incoming migration on ${description}`));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      server.once('error', (err: NodeJS.ErrnoException) => {
        signal?.removeEventListener('abort', onAbort);
        server.close();
        reject(new BatonError('EMIGRATE', `cannot listen for the incoming migration on ${description} (${err.code})`));
      });
      server.once('connection', (socket) => {
        signal?.removeEventListener('abort', onAbort);
        server.close();
        resolve(new TcpChannel(socket, description));
      });
      server.listen({ host, port, exclusive: true }, () => onListening?.());
    });
  }

  read(n: number, section: string): Promise<Buffer> {
    return this.received.read(n, section);
  }

  async write(chunks: Buffer[]): Promise<void> {
    for (const c of chunks) {
      if (this.closed || this.socket.destroyed) throw new BatonError('EMIGRATE', `migration channel ${this.description} is closed`);
      if (!this.socket.write(c)) await this.drained();
    }
  }

  private drained(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onDrain = () => { this.socket.off('close', onClose); resolve(); };
      const onClose = () => {
        this.socket.off('drain', onDrain);
        reject(new BatonError('EMIGRATE', `sending on ${this.description} failed: the destination went away`));
      };
      this.socket.once('drain', onDrain);
      this.socket.once('close', onClose);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.received.end(); // a read waiting for the peer ends now (migrate_cancel)
    // Whatever was written still goes out (end), then the socket is let go.
    await new Promise<void>((resolve) => {
      if (this.socket.destroyed) return resolve();
      const timer = setTimeout(() => { this.socket.destroy(); resolve(); }, 2000);
      this.socket.end(() => { clearTimeout(timer); resolve(); });
    });
    this.socket.destroy();
  }
}

/**
 * A small QMP client for Baton's own CLI, manager and tests. It speaks to baton-hv and to
 * QEMU alike: reads the greeting, negotiates, sends commands with ids and matches the
 * answers, and hands out events.
 *
 * Events that a command causes may arrive before its answer (QEMU sends STOP before the
 * `stop` return), so start waiting before executing:
 *
 *   const stopped = client.waitEvent('STOP');
 *   await client.execute('stop');
 *   await stopped;
 *
 * To send fds with a command (SCM_RIGHTS, e.g. `getfd`), connect with `{ fdPassing: true }`:
 * the socket is then opened by the native addon (and read through Node as usual), and
 * `executeWithFds('getfd', { fdname: 'tap0' }, [fd])` sends the fds with the command's bytes.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { BatonError } from '../../util/errors';
import { encodeQmpMessage, type QmpValue } from './json-format';
import { JsonStreamReader, QEMU_JSON_LIMITS, type JsonStreamItem } from './json-stream';
import { QmpError } from './qmp-errors';
import type { QmpVersionInfo } from './qmp-server';

export interface QmpGreeting {
  QMP: { version: QmpVersionInfo; capabilities: string[] };
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpClientOptions {
  /** Time allowed for connecting and reading the greeting; also the default per command. */
  timeoutMs?: number;
  /** Send qmp_capabilities right away (default true). */
  negotiate?: boolean;
  /** Capabilities to enable when negotiating, e.g. ['oob']. */
  enable?: string[];
  /** Open the socket with the native addon so that {@link QmpClient.executeWithFds} can send fds. */
  fdPassing?: boolean;
}

interface PendingCommand {
  command: string;
  resolve: (result: unknown) => void;
  reject: (error: Error) => void;
  timer?: NodeJS.Timeout;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const EVENT_BACKLOG = 256;

export class QmpClient extends EventEmitter {
  private readonly pending = new Map<number, PendingCommand>();
  private nextId = 1;
  private closed = false;
  private greetingWaiter?: { resolve: (g: QmpGreeting) => void; reject: (e: Error) => void };
  private readonly backlog: QmpEvent[] = [];
  /** The server's greeting, once read. */
  greeting?: QmpGreeting;

  private constructor(
    private readonly socket: net.Socket,
    private readonly socketPath: string,
    private readonly timeoutMs: number,
    /** The socket's fd when opened natively (fdPassing), for sendmsg with SCM_RIGHTS. */
    private readonly nativeFd?: number,
  ) {
    super();
    const reader = new JsonStreamReader((item) => this.onMessage(item), QEMU_JSON_LIMITS);
    socket.on('data', (data: Buffer) => reader.feed(data));
    socket.on('error', (err) => this.onGone(err));
    socket.on('close', () => this.onGone());
  }

  /** Connects to a monitor socket, reads the greeting and (by default) negotiates. */
  static async connect(socketPath: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let socket: net.Socket;
    let nativeFd: number | undefined;
    if (options.fdPassing) {
      // Loaded only here: plain clients (and QEMU tooling) need no addon.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { native } = require('../../native') as typeof import('../../native');
      try {
        nativeFd = native.unixConnect(socketPath);
      } catch (err) {
        throw new BatonError('QMP_DISCONNECTED', `cannot connect to QMP socket ${socketPath}: ${(err as Error).message}`);
      }
      // libuv adopts the connected fd as a pipe: reads and ordinary writes go through Node.
      socket = new net.Socket({ fd: nativeFd, readable: true, writable: true });
    } else {
      socket = net.connect(socketPath);
    }
    const client = new QmpClient(socket, socketPath, timeoutMs, nativeFd);
    try {
      await client.withTimeout(
        new Promise<QmpGreeting>((resolve, reject) => {
          client.greetingWaiter = { resolve, reject };
        }),
        `no QMP greeting from ${socketPath} within ${timeoutMs} ms`,
      );
      if (options.negotiate ?? true) {
        await client.execute('qmp_capabilities', options.enable ? { enable: options.enable } : undefined);
      }
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  /**
   * Runs a command and resolves with its `return` value; rejects with a QmpError carrying
   * the server's class and desc, or a BatonError if the connection ends or time runs out.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    return this.send<T>(command, args, options, (bytes) => this.socket.write(bytes));
  }

  private send<T>(command: string, args: Record<string, unknown> | undefined, options: { timeoutMs?: number }, write: (bytes: Buffer) => void): Promise<T> {
    if (this.closed) {
      return Promise.reject(new BatonError('QMP_DISCONNECTED', `QMP connection to ${this.socketPath} is closed; cannot run ${command}`));
    }
    const id = this.nextId++;
    const request: Record<string, unknown> = { execute: command };
    if (args !== undefined) request.arguments = args;
    request.id = id;
    return new Promise<T>((resolve, reject) => {
      const entry: PendingCommand = { command, resolve: resolve as (r: unknown) => void, reject };
      const timeoutMs = options.timeoutMs ?? this.timeoutMs;
      entry.timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BatonError('QMP_TIMEOUT', `QMP command ${command} got no answer from ${this.socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, entry);
      try {
        write(encodeQmpMessage(request));
      } catch (err) {
        this.pending.delete(id);
        clearTimeout(entry.timer);
        reject(err as Error);
      }
    });
  }

  /** One sendmsg carrying the fds with the first bytes; the rest (if the kernel took less) follows without fds. */
  private sendNative(bytes: Buffer, fds: number[], command: string): void {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { native } = require('../../native') as typeof import('../../native');
    const fd = this.nativeFd as number;
    const sent = native.sendmsgFds(fd, bytes, fds);
    if (sent < 0) throw new BatonError('QMP_SEND_FAILED', `QMP socket ${this.socketPath} is full; ${command} with fds was not sent, retry`);
    // A short write of a small command is rare; the remainder goes through Node's queue, in order.
    if (sent < bytes.length) this.socket.write(bytes.subarray(sent));
  }

  /**
   * Runs a command with `fds` attached (SCM_RIGHTS on the command's bytes), as QEMU's
   * `getfd` and `add-fd` expect. The fds stay open here: the server receives copies.
   * Needs a client connected with `{ fdPassing: true }`.
   */
  async executeWithFds<T = unknown>(command: string, args: Record<string, unknown> | undefined, fds: number[], options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.nativeFd === undefined) {
      throw new BatonError('QMP_NO_FD_PASSING', `QMP client for ${this.socketPath} cannot send fds with ${command}: connect with { fdPassing: true }`);
    }
    if (this.closed) throw new BatonError('QMP_DISCONNECTED', `QMP connection to ${this.socketPath} is closed; cannot run ${command}`);
    // sendmsg bypasses Node's write queue: let earlier writes reach the kernel first so
    // the bytes stay in order on the wire.
    while (this.socket.writableLength > 0) await new Promise((resolve) => this.socket.once('drain', resolve));
    return this.send<T>(command, args, options, (bytes) => this.sendNative(bytes, fds, command));
  }

  /** Calls `listener` for every event from now on; returns a function that stops it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.on('event', listener);
    return () => this.off('event', listener);
  }

  /**
   * Resolves with the next event named `name` that satisfies `predicate`. With
   * `includePast`, an event already received (the last 256 are kept) also counts.
   */
  waitEvent(
    name: string,
    predicate: (event: QmpEvent) => boolean = () => true,
    timeoutMs: number = this.timeoutMs,
    options: { includePast?: boolean } = {},
  ): Promise<QmpEvent> {
    const matches = (event: QmpEvent): boolean => event.event === name && predicate(event);
    if (options.includePast) {
      const past = this.backlog.find(matches);
      if (past) return Promise.resolve(past);
    }
    return new Promise<QmpEvent>((resolve, reject) => {
      const stop = (): void => {
        clearTimeout(timer);
        this.off('event', listener);
        this.off('close', onClose);
      };
      const listener = (event: QmpEvent): void => {
        if (!matches(event)) return;
        stop();
        resolve(event);
      };
      const onClose = (): void => {
        stop();
        reject(new BatonError('QMP_DISCONNECTED', `QMP connection to ${this.socketPath} closed while waiting for event ${name}`));
      };
      const timer = setTimeout(() => {
        stop();
        reject(new BatonError('QMP_TIMEOUT', `no QMP event ${name} from ${this.socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on('event', listener);
      this.once('close', onClose);
    });
  }

  /** Events received so far (the most recent 256). */
  pastEvents(): readonly QmpEvent[] {
    return this.backlog;
  }

  close(): void {
    this.socket.destroy();
    this.onGone();
  }

  private withTimeout<T>(promise: Promise<T>, message: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BatonError('QMP_TIMEOUT', message)), this.timeoutMs);
      promise.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  private onMessage(item: JsonStreamItem): void {
    if ('error' in item) {
      this.emit('protocol-error', new BatonError('QMP_BAD_OUTPUT', `unparsable QMP output from ${this.socketPath}: ${item.error}`));
      return;
    }
    const message = item.value as Record<string, QmpValue>;
    if (typeof message !== 'object' || message === null) return;
    if ('QMP' in message) {
      this.greeting = message as unknown as QmpGreeting;
      this.greetingWaiter?.resolve(this.greeting);
      this.greetingWaiter = undefined;
      return;
    }
    if (typeof message.event === 'string') {
      const event = message as unknown as QmpEvent;
      this.backlog.push(event);
      if (this.backlog.length > EVENT_BACKLOG) this.backlog.shift();
      this.emit('event', event);
      return;
    }
    if (!('return' in message) && !('error' in message)) return;
    // Our requests always carry a numeric id; an answer without one (the server could not
    // parse a request) belongs to the oldest command still waiting.
    const id = typeof message.id === 'number' ? message.id : this.pending.keys().next().value;
    if (id === undefined) return;
    const entry = this.pending.get(id);
    if (!entry) return;
    this.pending.delete(id);
    clearTimeout(entry.timer);
    if ('error' in message) {
      const error = message.error as { class?: string; desc?: string };
      entry.reject(new QmpError(error.class ?? 'GenericError', error.desc ?? 'error without desc', entry.command));
    } else {
      entry.resolve(message.return);
    }
  }

  private onGone(cause?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const reason = `QMP connection to ${this.socketPath} closed${cause ? `: ${cause.message}` : ''}`;
    this.greetingWaiter?.reject(new BatonError('QMP_DISCONNECTED', reason));
    this.greetingWaiter = undefined;
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new BatonError('QMP_DISCONNECTED', `${reason} before ${entry.command} was answered`));
      this.pending.delete(id);
    }
    this.emit('close');
  }
}

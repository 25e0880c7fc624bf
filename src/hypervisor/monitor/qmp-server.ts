/**
 * baton-hv's monitor: a QMP (QEMU Machine Protocol) server, wire-compatible with QEMU 7.2
 * so that clients written for QEMU (libvirt-style tools, qemu.qmp, socat scripts) work
 * unchanged. What "compatible" covers, each checked against a real QEMU in test/monitor:
 * the greeting, capabilities negotiation (with `oob`), `id` echo of any JSON value,
 * `return` / `error {class, desc}` with QEMU's texts, events with
 * `timestamp {seconds, microseconds}` (only after negotiation), the JSON reader's behaviour
 * on split, glued, malformed, oversized and over-nested input, and the output format.
 *
 * The VM owns the commands: it registers them (name, argument schema, async handler) and
 * emits events; this module owns the protocol. Per connection, commands run one at a time
 * and are answered in order (exec-oob commands, when enabled, jump the queue).
 *
 * Deliberate differences from QEMU 7.2:
 *  - one message may hold 1 MiB of JSON tokens (QEMU: 64 MiB), configurable;
 *  - a client that stops reading while more than 16 MiB of output waits is disconnected;
 *  - query-commands lists commands in registration order (QEMU's order is its hash's).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Logger, loggerFor } from '../../util/logger';
import { checkArguments, QmpCommandRegistry, type QmpCommandContext, type QmpCommandDefinition } from './commands';
import { QmpFdTable, QmpMessageFds } from './fd-table';
import { encodeQmpMessage, type QmpValue } from './json-format';
import { JsonStreamReader, type JsonStreamItem, type JsonStreamLimits } from './json-stream';
import { genericError, QmpError, QmpErrors } from './qmp-errors';
import { NetMonitorTransport, type MonitorConnection, type MonitorTransport } from './transport';

/**
 * The QEMU version baton-hv reports in the greeting and query-version. Clients use it to
 * decide which QMP dialect to speak (libvirt, for one, refuses QEMU older than 4.2 and
 * enables features by version). 7.2.0 says: "speak to me as to QEMU 7.2" — the release whose
 * wire behaviour this server is tested against, command by command. Baton's own version is
 * in `package`. Raise this only together with the compatibility tests.
 */
export const QMP_DIALECT_QEMU_VERSION = { major: 7, minor: 2, micro: 0 } as const;

export const DEFAULT_MONITOR_LIMITS: JsonStreamLimits = { maxMessageBytes: 1 << 20, maxNesting: 1024 };
export const DEFAULT_MAX_PENDING_OUTPUT_BYTES = 16 << 20;

export interface QmpVersionInfo {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpCommandErrorInfo {
  command: string;
  clientId: number;
  error: QmpError;
  /** The exception a handler threw when it was not a QmpError (a bug, or an unexpected failure). */
  cause?: unknown;
}

export interface QmpServerOptions {
  /** Commands; a fresh registry (with the built-ins) when omitted. */
  registry?: QmpCommandRegistry;
  transport?: MonitorTransport;
  /** `package` defaults to "baton-hv <Baton version>", `qemu` to QMP_DIALECT_QEMU_VERSION. */
  version?: Partial<QmpVersionInfo>;
  limits?: Partial<JsonStreamLimits>;
  maxPendingOutputBytes?: number;
  logger?: Logger;
  /** Called for every command answered with an error (after it is logged). */
  onCommandError?: (info: QmpCommandErrorInfo) => void;
}

/** Reads Baton's version from the package.json above this file (src/ or dist/ alike). */
export function batonVersion(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'baton' && pkg.version) return pkg.version;
    } catch {
      // no package.json here; keep climbing
    }
    if (path.dirname(dir) === dir) return 'unknown';
  }
}

function isPlainObject(value: unknown): value is Record<string, QmpValue> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function hasOwn(object: object, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key);
}

/** A successful answer: QEMU writes `return` before `id`. */
function returnMessage(result: unknown, id: { present: boolean; value?: QmpValue }): Record<string, unknown> {
  const message: Record<string, unknown> = { return: result === undefined ? {} : result };
  if (id.present) message.id = id.value;
  return message;
}

/** An error answer: QEMU writes `id` before `error`. */
function errorMessage(error: QmpError, id: { present: boolean; value?: QmpValue }): Record<string, unknown> {
  return id.present ? { id: id.value, error: error.toWire() } : { error: error.toWire() };
}

/** One client connection: its negotiation state, its JSON reader, its queue, its fds. */
class QmpSession {
  /** false until qmp_capabilities succeeds: only qmp_capabilities is accepted before. */
  commandMode = false;
  /** Events flow only once the qmp_capabilities answer has been queued. */
  eventsEnabled = false;
  oobEnabled = false;
  closed = false;
  readonly fds = new QmpFdTable();
  /** fds received and not yet attached to a command (they belong to the next one parsed). */
  private unattachedFds: number[] = [];
  private queue: Promise<void> = Promise.resolve();
  private readonly reader: JsonStreamReader;

  constructor(
    readonly id: number,
    private readonly connection: MonitorConnection,
    private readonly server: QmpServer,
    limits: JsonStreamLimits,
  ) {
    this.reader = new JsonStreamReader((item) => this.onMessage(item), limits);
  }

  start(greeting: unknown): void {
    this.send(greeting);
    this.connection.start({
      onData: (data, fds) => {
        if (this.closed) {
          new QmpMessageFds(fds).closeUnclaimed();
          return;
        }
        this.unattachedFds.push(...fds);
        this.reader.feed(data);
      },
      onClose: () => this.onClosed(),
    });
  }

  private onMessage(item: JsonStreamItem): void {
    const fds = this.unattachedFds;
    this.unattachedFds = [];
    const value = 'value' in item ? item.value : undefined;
    const outOfBand = this.oobEnabled && isPlainObject(value) && hasOwn(value, 'exec-oob') && !hasOwn(value, 'execute');
    if (outOfBand) {
      void this.dispatch(item, fds);
      return;
    }
    this.queue = this.queue.then(() => this.dispatch(item, fds));
  }

  /** Answers one message; never throws (a failure becomes the client's error response). */
  private async dispatch(item: JsonStreamItem, fds: number[]): Promise<void> {
    const messageFds = new QmpMessageFds(fds);
    let id: { present: boolean; value?: QmpValue } = { present: false };
    let command = '';
    const afterResponse: Array<() => void> = [];
    try {
      if ('error' in item) throw genericError(item.error);
      const request = item.value;
      if (!isPlainObject(request)) throw QmpErrors.notAnObject();
      if (hasOwn(request, 'id')) id = { present: true, value: request.id };
      const { name, oob, args } = this.checkRequest(request);
      command = name;
      if (!this.commandMode && name !== 'qmp_capabilities') throw QmpErrors.expectingNegotiation();
      const definition = this.server.registry.get(name);
      if (!definition) throw QmpErrors.commandNotFound(name);
      if (oob && !definition.allowOob) throw QmpErrors.oobNotSupported(name);
      const checkedArgs = checkArguments(definition.args, args);
      const ctx: QmpCommandContext = {
        fds: this.fds,
        messageFds,
        clientId: this.id,
        command: name,
        afterResponse: (action) => afterResponse.push(action),
      };
      const result = await definition.handler(checkedArgs, ctx);
      if (this.closed) {
        afterResponse.forEach((action) => action()); // nobody to answer; the action still stands
        return;
      }
      this.send(returnMessage(result, id), () => afterResponse.forEach((action) => action()));
      // The negotiation answer is queued: events queued from now on follow it on the wire.
      if (this.commandMode) this.eventsEnabled = true;
    } catch (err) {
      const error = this.server.reportCommandError(command, this.id, err);
      if (!this.closed) this.send(errorMessage(error, id));
    } finally {
      messageFds.closeUnclaimed();
    }
  }

  /** QEMU's qmp_dispatch_check_obj: which members a request may have, and their types. */
  private checkRequest(request: Record<string, QmpValue>): {
    name: string;
    oob: boolean;
    args: Record<string, QmpValue> | undefined;
  } {
    let execute: string | undefined;
    let execOob: string | undefined;
    let args: Record<string, QmpValue> | undefined;
    for (const [key, value] of Object.entries(request)) {
      switch (key) {
        case 'execute':
          if (typeof value !== 'string') throw QmpErrors.memberMustBeString('execute');
          execute = value;
          break;
        case 'exec-oob':
          if (!this.oobEnabled) throw QmpErrors.memberUnexpected('exec-oob');
          if (typeof value !== 'string') throw QmpErrors.memberMustBeString('exec-oob');
          execOob = value;
          break;
        case 'arguments':
          if (!isPlainObject(value)) throw QmpErrors.argumentsMustBeObject();
          args = value;
          break;
        case 'id':
          break;
        default:
          throw QmpErrors.memberUnexpected(key);
      }
    }
    if (execute !== undefined && execOob !== undefined) throw QmpErrors.executeClashesWithOob();
    const name = execute ?? execOob;
    if (name === undefined) throw QmpErrors.lacksExecute();
    return { name, oob: execOob !== undefined, args };
  }

  send(message: unknown, done?: () => void): void {
    if (this.closed) {
      done?.();
      return;
    }
    this.connection.write(encodeQmpMessage(message), done);
    if (this.connection.pendingWriteBytes() > this.server.maxPendingOutputBytes) {
      this.server.logger.warn('monitor client stopped reading; disconnecting it', {
        client: this.id,
        pendingBytes: this.connection.pendingWriteBytes(),
      });
      this.connection.destroy();
    }
  }

  /** The server is going away: flush what is queued, then close. */
  close(): void {
    if (this.closed) return;
    this.connection.close();
    this.onClosed();
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    new QmpMessageFds(this.unattachedFds).closeUnclaimed();
    this.unattachedFds = [];
    this.fds.closeAll();
    this.server.forgetSession(this);
  }
}

export class QmpServer {
  readonly registry: QmpCommandRegistry;
  readonly logger: Logger;
  readonly maxPendingOutputBytes: number;
  readonly version: QmpVersionInfo;
  private readonly transport: MonitorTransport;
  private readonly limits: JsonStreamLimits;
  private readonly onCommandError?: (info: QmpCommandErrorInfo) => void;
  private readonly sessions = new Set<QmpSession>();
  private nextSessionId = 1;
  private listening = false;
  private heldEvents?: Record<string, unknown>[];

  constructor(options: QmpServerOptions = {}) {
    this.registry = options.registry ?? new QmpCommandRegistry();
    this.transport = options.transport ?? new NetMonitorTransport();
    this.limits = { ...DEFAULT_MONITOR_LIMITS, ...options.limits };
    this.maxPendingOutputBytes = options.maxPendingOutputBytes ?? DEFAULT_MAX_PENDING_OUTPUT_BYTES;
    this.logger = options.logger ?? loggerFor('monitor');
    this.onCommandError = options.onCommandError;
    const dialect = options.version?.qemu ?? QMP_DIALECT_QEMU_VERSION;
    this.version = {
      qemu: { major: dialect.major, minor: dialect.minor, micro: dialect.micro },
      package: options.version?.package ?? `baton-hv ${batonVersion()}`,
    };
    this.registerBuiltins();
  }

  registerCommand(name: string, definition: QmpCommandDefinition): void {
    this.registry.register(name, definition);
  }

  get clientCount(): number {
    return this.sessions.size;
  }

  /** Listens on a UNIX socket (mode 0600; a stale socket file is replaced). */
  async listen(socketPath: string): Promise<void> {
    await this.transport.listen(socketPath, (connection) => this.accept(connection));
    this.listening = true;
    this.logger.debug('monitor listening', { socket: socketPath });
  }

  /**
   * Sends an event to every client past negotiation, e.g. `emitEvent('STOP')` or
   * `emitEvent('SHUTDOWN', {guest: true, reason: 'guest-shutdown'})`.
   */
  emitEvent(name: string, data?: Record<string, unknown>): void {
    const microsSinceEpoch = Math.floor((performance.timeOrigin + performance.now()) * 1000);
    const message: Record<string, unknown> = {
      timestamp: { seconds: Math.floor(microsSinceEpoch / 1e6), microseconds: microsSinceEpoch % 1e6 },
      event: name,
    };
    if (data !== undefined) message.data = data;
    if (this.heldEvents) this.heldEvents.push(message);
    else this.sendEvent(message);
  }

  /**
   * Until the returned function is called, events wait here (with the time they happened)
   * instead of waking the clients: a migration's switchover on a small host must not lose
   * its core to a client reading an event. Idempotent release; holds do not nest.
   */
  holdEvents(): () => void {
    if (this.heldEvents) return () => undefined;
    const held: Record<string, unknown>[] = [];
    this.heldEvents = held;
    return () => {
      if (this.heldEvents !== held) return;
      this.heldEvents = undefined;
      for (const message of held) this.sendEvent(message);
    };
  }

  private sendEvent(message: Record<string, unknown>): void {
    for (const session of this.sessions) {
      if (session.eventsEnabled) session.send(message);
    }
  }

  /** Stops listening, closes every client (after flushing its output) and removes the socket file. */
  async close(): Promise<void> {
    if (this.listening) {
      this.listening = false;
      await this.transport.close();
    }
    for (const session of [...this.sessions]) session.close();
  }

  /** @internal */
  forgetSession(session: QmpSession): void {
    this.sessions.delete(session);
    this.logger.debug('monitor client disconnected', { client: session.id });
  }

  /** @internal Turns whatever a command threw into the QmpError the client gets, and logs it. */
  reportCommandError(command: string, clientId: number, thrown: unknown): QmpError {
    let error: QmpError;
    let cause: unknown;
    if (thrown instanceof QmpError) {
      error = thrown;
      // Guarded: a client sending garbage produces one of these per stray byte.
      if (this.logger.isDebugEnabled()) {
        this.logger.debug('monitor command failed', { command, client: clientId, class: error.errorClass, desc: error.desc });
      }
    } else {
      cause = thrown;
      const message = thrown instanceof Error ? thrown.message : String(thrown);
      error = genericError(message);
      this.logger.error('monitor command threw an unexpected error', {
        command,
        client: clientId,
        error: message,
        stack: thrown instanceof Error ? thrown.stack : undefined,
      });
    }
    try {
      this.onCommandError?.({ command, clientId, error, cause });
    } catch (hookError) {
      this.logger.error('onCommandError hook threw', { error: String(hookError) });
    }
    return error;
  }

  private accept(connection: MonitorConnection): void {
    if (!this.listening) {
      connection.destroy();
      return;
    }
    const session = new QmpSession(this.nextSessionId++, connection, this, this.limits);
    this.sessions.add(session);
    this.logger.debug('monitor client connected', { client: session.id, peer: connection.description });
    session.start(this.greeting());
  }

  /** QEMU's greeting, with its key order: version {qemu {micro, minor, major}, package}, capabilities. */
  private greeting(): unknown {
    return { QMP: { version: this.versionWire(), capabilities: ['oob'] } };
  }

  private versionWire(): unknown {
    const { major, minor, micro } = this.version.qemu;
    return { qemu: { micro, minor, major }, package: this.version.package };
  }

  private sessionOf(clientId: number): QmpSession | undefined {
    for (const session of this.sessions) if (session.id === clientId) return session;
    return undefined;
  }

  private registerBuiltins(): void {
    this.registry.register('qmp_capabilities', {
      args: { '*enable': { array: { enum: ['oob'] } } },
      handler: (args, ctx) => {
        const session = this.sessionOf(ctx.clientId);
        if (!session) return {};
        if (session.commandMode) throw QmpErrors.negotiationAlreadyComplete();
        session.commandMode = true;
        session.oobEnabled = ((args.enable as string[] | undefined) ?? []).includes('oob');
        return {};
      },
    });
    this.registry.register('query-version', { handler: () => this.versionWire() });
    this.registry.register('query-commands', {
      handler: () => this.registry.names().map((name) => ({ name })),
    });
    this.registry.register('getfd', {
      args: { fdname: 'str' },
      handler: (args, ctx) => {
        const name = args.fdname as string;
        const fd = ctx.messageFds.takeOne();
        if (fd === undefined) throw QmpErrors.noFdSupplied();
        if (/^[0-9]/.test(name)) {
          fs.closeSync(fd);
          throw QmpErrors.fdNameStartsWithDigit();
        }
        ctx.fds.add(name, fd);
        return {};
      },
    });
    this.registry.register('closefd', {
      args: { fdname: 'str' },
      handler: (args, ctx) => {
        if (!ctx.fds.close(args.fdname as string)) throw QmpErrors.fdNotFound(args.fdname as string);
        return {};
      },
    });
  }
}

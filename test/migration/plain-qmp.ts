/**
 * A deliberately plain QMP client, the way a script written for QEMU talks to its monitor
 * (as qmp-shell or a Python `socket` loop would): one JSON object per line, the greeting,
 * `qmp_capabilities`, then `{"execute", "arguments"}` requests answered in order, events
 * collected as they come. Nothing of Baton's own client is used, so what passes here is
 * what QEMU-era tooling gets.
 */
import net from 'node:net';

export interface PlainEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export class PlainQmpError extends Error {
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string) {
    super(`${command}: ${errorClass}: ${desc}`);
  }
}

export class PlainQmp {
  readonly events: PlainEvent[] = [];
  private buffered = '';
  private readonly waiting: Array<{ command: string; resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private readonly eventWaiters: Array<{ match: (e: PlainEvent) => boolean; resolve: (e: PlainEvent) => void }> = [];
  greeting?: Record<string, unknown>;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffered += chunk;
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl).trim();
        this.buffered = this.buffered.slice(nl + 1);
        if (line) this.onMessage(JSON.parse(line) as Record<string, unknown>);
      }
    });
    socket.on('close', () => {
      for (const w of this.waiting.splice(0)) w.reject(new Error(`monitor closed before ${w.command} was answered`));
    });
  }

  static async connect(path: string): Promise<PlainQmp> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new PlainQmp(socket);
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (client.greeting) {
          clearInterval(poll);
          resolve();
        }
      }, 5);
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  execute<T = Record<string, unknown>>(command: string, args?: Record<string, unknown>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.waiting.push({ command, resolve: resolve as (v: unknown) => void, reject });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** The first event (already received or still to come) that `match` accepts. */
  waitEvent(match: (e: PlainEvent) => boolean, timeoutMs = 30_000): Promise<PlainEvent> {
    const past = this.events.find(match);
    if (past) return Promise.resolve(past);
    return new Promise<PlainEvent>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching event within ${timeoutMs} ms; got ${JSON.stringify(this.events)}`)), timeoutMs);
      this.eventWaiters.push({ match, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  }

  migrationStatuses(): string[] {
    return this.events.filter((e) => e.event === 'MIGRATION').map((e) => e.data?.status as string);
  }

  close(): void {
    this.socket.destroy();
  }

  private onMessage(message: Record<string, unknown>): void {
    if ('QMP' in message) {
      this.greeting = message;
    } else if (typeof message.event === 'string') {
      const event = message as unknown as PlainEvent;
      this.events.push(event);
      for (let i = this.eventWaiters.length - 1; i >= 0; i--) {
        if (this.eventWaiters[i].match(event)) this.eventWaiters.splice(i, 1)[0].resolve(event);
      }
    } else if ('return' in message || 'error' in message) {
      const w = this.waiting.shift();
      if (!w) return;
      const error = message.error as { class: string; desc: string } | undefined;
      if (error) w.reject(new PlainQmpError(w.command, error.class, error.desc));
      else w.resolve(message.return);
    }
  }
}

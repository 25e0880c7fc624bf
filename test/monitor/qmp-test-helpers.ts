/**
 * Shared by the monitor tests: a raw line-level QMP connection (bytes in, CRLF lines out),
 * a real QEMU started with `-machine none` as the reference implementation, and the
 * stand-in VM commands our server needs so the same script can run against both.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { QmpServer } from '../../src/hypervisor/monitor';

export const QEMU_BINARY = 'qemu-system-x86_64';

export function tempSocketPath(tag: string): string {
  return path.join(os.tmpdir(), `bt-qmp-${tag}-${process.pid}-${Math.random().toString(36).slice(2, 8)}.sock`);
}

/** A client that sees exactly what the server writes, line by line (CRLF kept). */
export class RawQmpConnection {
  private buffered = '';
  readonly lines: string[] = [];
  private cursor = 0;
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (data: Buffer) => {
      const pieces = (this.buffered + data.toString('latin1')).split('\n');
      this.buffered = pieces.pop() ?? '';
      for (const piece of pieces) this.lines.push(piece + '\n');
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static open(socketPath: string): Promise<RawQmpConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      socket.once('connect', () => resolve(new RawQmpConnection(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((w) => w());
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** The next `count` lines, waiting for them up to `timeoutMs`. */
  async read(count: number, timeoutMs = 10_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length - this.cursor < count) {
      if (this.closed) throw new Error(`connection closed after ${this.lines.length - this.cursor} of ${count} lines`);
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`got ${this.lines.length - this.cursor} of ${count} lines: ${JSON.stringify(this.lines.slice(this.cursor))}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const out = this.lines.slice(this.cursor, this.cursor + count);
    this.cursor += count;
    return out;
  }

  /** Lines that arrived and were not read yet. */
  unread(): string[] {
    return this.lines.slice(this.cursor);
  }

  close(): void {
    this.socket.destroy();
  }
}

export function qemuAvailable(): boolean {
  return spawnSync(QEMU_BINARY, ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * A real QEMU with nothing but QMP sockets: the reference our answers are compared with.
 * A QEMU monitor serves one client at a time, so it gets two monitors (two sockets) for
 * tests that need two clients at once; ours serves both on one socket.
 */
export class ReferenceQemu {
  private constructor(
    readonly process: ChildProcess,
    readonly socketPath: string,
    readonly secondSocketPath: string,
  ) {}

  static async start(): Promise<ReferenceQemu> {
    const socketPath = tempSocketPath('qemu');
    const secondSocketPath = tempSocketPath('qemu2');
    const child = spawn(
      QEMU_BINARY,
      [
        '-machine', 'none', '-nodefaults', '-display', 'none',
        '-qmp', `unix:${socketPath},server=on,wait=off`,
        '-qmp', `unix:${secondSocketPath},server=on,wait=off`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`QEMU exited (${child.exitCode}) before listening: ${stderr}`);
      if (fs.existsSync(socketPath) && fs.existsSync(secondSocketPath)) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`QEMU did not create ${socketPath} within 15 s: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    return new ReferenceQemu(child, socketPath, secondSocketPath);
  }

  async stop(): Promise<void> {
    if (this.process.exitCode === null && this.process.pid !== undefined) {
      const exited = new Promise((resolve) => this.process.once('exit', resolve));
      process.kill(this.process.pid, 'SIGKILL');
      await exited;
    }
    fs.rmSync(this.socketPath, { force: true });
    fs.rmSync(this.secondSocketPath, { force: true });
  }
}

/**
 * The few VM commands the comparison script uses, answering as QEMU with `-machine none`
 * does. The real ones belong to the VM; here they only give the protocol something to run.
 */
export function registerStandInVmCommands(server: QmpServer): void {
  let running = true;
  server.registerCommand('query-status', {
    handler: () => ({ status: running ? 'running' : 'paused', singlestep: false, running }),
  });
  server.registerCommand('stop', {
    handler: () => {
      if (running) {
        running = false;
        server.emitEvent('STOP');
      }
      return {};
    },
  });
  server.registerCommand('cont', {
    handler: () => {
      if (!running) {
        running = true;
        server.emitEvent('RESUME');
      }
      return {};
    },
  });
}

/**
 * Replaces what legitimately differs between two QMP servers — version numbers, package
 * string, timestamps — with placeholders; everything else must match byte for byte.
 */
export function normalizeQmpLine(line: string): string {
  return line
    .replace(/"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "(?:[^"\\]|\\.)*"/, '"qemu": {VERSION}, "package": "PACKAGE"')
    .replace(/"timestamp": \{"seconds": \d+, "microseconds": \d+\}/, '"timestamp": {TIME}');
}

/** Checks that a line's timestamp (if any) is the present wall-clock time. */
export function timestampIsNow(line: string): boolean {
  const match = /"timestamp": \{"seconds": (\d+), "microseconds": (\d+)\}/.exec(line);
  if (!match) return false;
  const seconds = Number(match[1]);
  const micros = Number(match[2]);
  return micros >= 0 && micros < 1_000_000 && Math.abs(seconds - Date.now() / 1000) < 120;
}

/**
 * One QEMU process booting the test guest: its serial output (stdout), stderr and exit, for
 * the suites that check the guest against a VMM nobody here wrote.
 */
import { ChildProcess, spawn } from 'child_process';

export const QEMU = 'qemu-system-x86_64';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class QemuRun {
  readonly child: ChildProcess;
  readonly startedAt = process.hrtime.bigint();
  serial = '';
  stderr = '';
  exitStatus?: ExitStatus;
  readonly exited: Promise<ExitStatus>;
  private readonly waiters = new Set<() => void>();

  /** `netns`: run inside that namespace (where its TAP lives); `ip netns exec` execs QEMU in place, so the pid is QEMU's. */
  constructor(readonly args: string[], opts: { netns?: string } = {}) {
    this.child = opts.netns
      ? spawn('ip', ['netns', 'exec', opts.netns, QEMU, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('latin1').on('data', (chunk: string) => {
      this.serial += chunk;
      this.waiters.forEach((check) => check());
    });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exitStatus = { code, signal };
        this.waiters.forEach((check) => check());
        resolve(this.exitStatus);
      });
    });
  }

  /** Milliseconds since spawn. */
  elapsedMs(): number {
    return Number(process.hrtime.bigint() - this.startedAt) / 1e6;
  }

  /** Resolves once `done(serial)` holds; rejects on timeout or exit, showing the output. */
  waitForSerial(done: (serial: string) => boolean, what: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (error?: Error) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (error) reject(error);
        else resolve();
      };
      const failure = (why: string) =>
        new Error(`${why} waiting for ${what} from QEMU (${this.args.join(' ')}).\n` +
          `serial so far:\n${this.serial.slice(-3000)}\nstderr:\n${this.stderr.slice(-2000)}`);
      const check = () => {
        if (done(this.serial)) finish();
        else if (this.exitStatus) finish(failure(`QEMU exited (${JSON.stringify(this.exitStatus)})`));
      };
      const timer = setTimeout(() => finish(failure(`timed out after ${timeoutMs} ms`)), timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  waitForLine(line: string, timeoutMs: number): Promise<void> {
    return this.waitForSerial((serial) => serial.includes(line), JSON.stringify(line), timeoutMs);
  }

  /** The first match of `pattern` in the serial output that `accept` takes. */
  async waitFor(pattern: RegExp, timeoutMs: number, accept: (m: RegExpMatchArray) => boolean = () => true): Promise<RegExpMatchArray> {
    const global = new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : pattern.flags + 'g');
    let match: RegExpMatchArray | undefined;
    await this.waitForSerial((serial) => (match = [...serial.matchAll(global)].find(accept)) !== undefined, String(pattern), timeoutMs);
    return match as RegExpMatchArray;
  }

  async waitForExit(timeoutMs: number): Promise<ExitStatus> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`QEMU did not exit within ${timeoutMs} ms; serial:\n${this.serial.slice(-2000)}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL by pid (no pattern kills). */
  kill(): void {
    if (!this.exitStatus && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }

  /** kill, then wait: a TAP it held is free for the next QEMU once this resolves. */
  async stop(): Promise<void> {
    this.kill();
    await this.exited;
  }
}

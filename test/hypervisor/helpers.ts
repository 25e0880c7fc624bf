/**
 * Shared by the baton-hv tests: baton-hv started as a real process (bin/baton-hv.js over
 * dist/), its serial log read as the guest writes it, its monitor reached with QmpClient,
 * and everything a test starts (processes, temp dirs, clients) ended in afterEach/afterAll
 * through one `HvTracker`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, type QmpEvent } from '../../src/hypervisor/monitor';

export const REPO_ROOT = path.resolve(__dirname, '../..');
export const HV_ENTRY = path.join(REPO_ROOT, 'bin/baton-hv.js');
export const TEST_GUEST_ELF = path.join(REPO_ROOT, 'test/guest/build/testguest.elf');
export const READY_LINE = 'baton-testguest: ready';

/** Start-up of a process on a loaded 2-core machine: generous, never relied on for speed. */
export const START_TIMEOUT_MS = 15_000;

/** Why baton-hv cannot be tested here, or undefined when it can. */
export function hvSkipReason(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return 'baton-hv tests: /dev/kvm is not usable here';
  }
  if (!fs.existsSync(path.join(REPO_ROOT, 'dist/hypervisor/main.js'))) {
    return 'baton-hv tests: dist/ is not built (run `npx tsc -p tsconfig.build.json`)';
  }
  if (!fs.existsSync(TEST_GUEST_ELF)) return 'baton-hv tests: the test guest is not built (run `make -C test/guest`)';
  return undefined;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface HvOptions {
  /** The guest's command line (`--append`); omitted when undefined. */
  append?: string;
  kernel?: string;
  memoryMiB?: number;
  vcpus?: number;
  /** Further flags, appended after the standard ones. */
  extraArgs?: string[];
  /** Leave out --monitor / --serial-log (for command-line error tests). */
  bare?: boolean;
}

/** One baton-hv process, its files (monitor socket, serial log) and its exit. */
export class HvProcess {
  readonly child: ChildProcess;
  readonly monitorPath: string;
  readonly serialLogPath: string;
  stdout = '';
  stderr = '';
  exitStatus?: ExitStatus;
  readonly exited: Promise<ExitStatus>;
  private readonly startedAt = Date.now();

  constructor(readonly args: string[], readonly dir: string, files: { monitor: string; serialLog: string }) {
    this.monitorPath = files.monitor;
    this.serialLogPath = files.serialLog;
    this.child = spawn(process.execPath, [HV_ENTRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    // 'close', not 'exit': only then has everything the process wrote to stderr been read.
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
  }

  get pid(): number {
    return this.child.pid as number;
  }

  elapsedMs(): number {
    return Date.now() - this.startedAt;
  }

  /** The serial output so far ('' before the guest wrote anything). */
  serial(): string {
    try {
      return fs.readFileSync(this.serialLogPath, 'latin1');
    } catch {
      return '';
    }
  }

  /** What a failure message should show about this process. */
  describe(): string {
    const serial = this.serial();
    return `baton-hv ${this.args.join(' ')}\n  exit: ${JSON.stringify(this.exitStatus ?? 'running')}\n` +
      `  serial (last 1500 chars):\n${serial.slice(-1500)}\n  stderr (last 1500 chars):\n${this.stderr.slice(-1500)}`;
  }

  /**
   * Resolves with the serial output once `done(serial)` holds; polls the log file (the
   * console writes it synchronously). Rejects on timeout or when the process exits first.
   */
  async waitForSerial(done: (serial: string) => boolean, what: string, timeoutMs = START_TIMEOUT_MS, pollMs = 20): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const serial = this.serial();
      if (done(serial)) return serial;
      if (this.exitStatus) throw new Error(`baton-hv exited while waiting for ${what}\n${this.describe()}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe()}`);
      await sleep(pollMs);
    }
  }

  /** Waits until `line` has appeared `count` times in the serial log. */
  waitForLine(line: string, count = 1, timeoutMs = START_TIMEOUT_MS): Promise<string> {
    return this.waitForSerial((s) => countLines(s, line) >= count, `${count} x "${line}"`, timeoutMs);
  }

  /** Waits for ticks until one numbered at least `n` appears. */
  async waitForTick(n: number, timeoutMs = START_TIMEOUT_MS): Promise<Tick[]> {
    const serial = await this.waitForSerial((s) => (lastTick(parseTicks(s))?.n ?? -1) >= n, `tick ${n}`, timeoutMs);
    return parseTicks(serial);
  }

  /** Connects to the monitor once the socket exists, negotiating capabilities. */
  async qmp(timeoutMs = START_TIMEOUT_MS): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.exitStatus) throw new Error(`baton-hv exited before its monitor answered\n${this.describe()}`);
      if (fs.existsSync(this.monitorPath)) {
        try {
          return await QmpClient.connect(this.monitorPath, { timeoutMs: 10_000 });
        } catch (err) {
          if (Date.now() > deadline) throw err;
        }
      }
      if (Date.now() > deadline) throw new Error(`monitor ${this.monitorPath} did not appear within ${timeoutMs} ms\n${this.describe()}`);
      await sleep(20);
    }
  }

  /** Resolves with the exit status; rejects (and kills) after `timeoutMs`: an exit must never hang. */
  async waitExit(timeoutMs = 10_000): Promise<ExitStatus> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        const described = this.describe();
        this.kill();
        reject(new Error(`baton-hv did not exit within ${timeoutMs} ms\n${described}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL by pid, if still running. */
  kill(): void {
    if (this.exitStatus || this.child.pid === undefined) return;
    try {
      process.kill(this.child.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

/**
 * Owns what a test file starts: temp dirs, baton-hv processes, QMP clients. `cleanup()`
 * (afterEach/afterAll) closes clients, kills processes by pid and removes the dirs.
 */
export class HvTracker {
  private readonly processes: HvProcess[] = [];
  private readonly clients: QmpClient[] = [];
  private readonly dirs: string[] = [];

  tempDir(tag: string): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `bt-hv-${tag}-`));
    this.dirs.push(dir);
    return dir;
  }

  /** Starts baton-hv with a monitor socket and serial log in a fresh temp dir. */
  start(tag: string, options: HvOptions = {}): HvProcess {
    const dir = this.tempDir(tag);
    const files = { monitor: path.join(dir, 'qmp.sock'), serialLog: path.join(dir, 'serial.log') };
    return this.startIn(dir, files, options);
  }

  /** Starts baton-hv in `dir` with the given socket and log paths (e.g. a restore beside its save). */
  startIn(dir: string, files: { monitor: string; serialLog: string }, options: HvOptions = {}): HvProcess {
    const args: string[] = [];
    args.push('--kernel', options.kernel ?? TEST_GUEST_ELF);
    if (options.append !== undefined) args.push('--append', options.append);
    args.push('-m', String(options.memoryMiB ?? 128), '--smp', String(options.vcpus ?? 1));
    if (!options.bare) args.push('--monitor', files.monitor, '--serial-log', files.serialLog);
    args.push(...(options.extraArgs ?? []));
    return this.spawnRaw(args, dir, files);
  }

  /** Starts baton-hv with exactly `args` (no defaults). */
  spawnRaw(args: string[], dir = this.tempDir('raw'), files = { monitor: path.join(dir, 'qmp.sock'), serialLog: path.join(dir, 'serial.log') }): HvProcess {
    const hv = new HvProcess(args, dir, files);
    this.processes.push(hv);
    return hv;
  }

  async qmp(hv: HvProcess): Promise<QmpClient> {
    const client = await hv.qmp();
    this.clients.push(client);
    return client;
  }

  async cleanup(): Promise<void> {
    for (const c of this.clients.splice(0)) c.close();
    const processes = this.processes.splice(0);
    for (const p of processes) p.kill();
    await Promise.all(processes.map((p) => (p.child.pid === undefined ? undefined : p.exited)));
    for (const d of this.dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  }
}

export interface Tick {
  n: number;
  tsc: bigint;
}

const TICK_LINE = /^tick (\d+) tsc (\d+)$/gm;

/** Every complete `tick N tsc T` line, in order (a partial last line is ignored). */
export function parseTicks(serial: string): Tick[] {
  const complete = serial.slice(0, serial.lastIndexOf('\n') + 1);
  return [...complete.matchAll(TICK_LINE)].map((m) => ({ n: Number(m[1]), tsc: BigInt(m[2]) }));
}

export function lastTick(ticks: Tick[]): Tick | undefined {
  return ticks[ticks.length - 1];
}

/**
 * How often `line` (plus its newline) occurs. Not anchored at line starts: a reset can cut
 * a guest line short (a `rep outsb` crossing a page is several exits), and the next boot's
 * text then follows on the same line.
 */
export function countLines(serial: string, line: string): number {
  return serial.split(line + '\n').length - 1;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts waiting for an event before `action` runs (events may beat the command's answer). */
export async function expectEvent(
  client: QmpClient, name: string, action: () => Promise<unknown>, timeoutMs = 10_000,
  predicate?: (e: QmpEvent) => boolean,
): Promise<QmpEvent> {
  const event = client.waitEvent(name, predicate, timeoutMs);
  event.catch(() => undefined);
  await action();
  return event;
}

export async function queryStatus(client: QmpClient): Promise<string> {
  return (await client.execute<{ status: string }>('query-status')).status;
}

/**
 * Polls query-status until it reports `status`. For changes that may happen before a
 * client connects (an incoming load that finishes at once): events sent then are gone.
 */
export async function waitForStatus(client: QmpClient, status: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let seen = await queryStatus(client);
  while (seen !== status) {
    if (Date.now() > deadline) throw new Error(`status stayed "${seen}" for ${timeoutMs} ms, waiting for "${status}"`);
    await sleep(20);
    seen = await queryStatus(client);
  }
}

/**
 * A test that needs this host's KVM and a built test guest: where they are missing it
 * prints why and returns, rather than being skipped silently.
 */
export function maybe(name: string, fn: () => Promise<void>, timeoutMs = 30_000): void {
  test(name, async () => {
    const skipReason = hvSkipReason();
    if (skipReason) {
      console.warn(`skipped: ${skipReason}`);
      return;
    }
    await fn();
  }, timeoutMs);
}

export interface ThreadSched {
  tid: number;
  comm: string;
  nice: number;
  /** SCHED_OTHER, SCHED_IDLE, or the policy's number. */
  policy: 'other' | 'idle' | number;
  /** Host CPUs it may run on, as /proc lists them ("0", "0-1"). */
  cpus: string;
}

/** The threads of process `pid` with their nice value, scheduling policy and CPUs (/proc/PID/task/TID/{stat,status}). */
export function threadsOf(pid: number): ThreadSched[] {
  const out: ThreadSched[] = [];
  for (const name of fs.readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    let status: string;
    try {
      stat = fs.readFileSync(`/proc/${pid}/task/${name}/stat`, 'latin1');
      status = fs.readFileSync(`/proc/${pid}/task/${name}/status`, 'latin1');
    } catch {
      continue; // ended meanwhile
    }
    // comm is in parentheses and may hold spaces: the fields after it start at the last ')'.
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const policy = Number(fields[38]); // field 41 of proc(5), counted from state (field 3)
    const cpus = /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? '?';
    out.push({ tid: Number(name), comm, nice: Number(fields[16]), policy: policy === 0 ? 'other' : policy === 5 ? 'idle' : policy, cpus });
  }
  return out;
}

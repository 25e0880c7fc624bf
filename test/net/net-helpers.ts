/**
 * Shared by the virtio-net-on-TAP tests: a network namespace the test owns, the host-side
 * UDP tool (test/net/udp-tool.c, built with gcc on first use), and hypervisor processes —
 * baton-hv or QEMU — started in the root namespace or inside ours, with extra inherited
 * fds when asked. Everything started here is ended by pid in `NetLab.cleanup()`.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/hypervisor/monitor';
import { HV_ENTRY, REPO_ROOT, TEST_GUEST_ELF, hvSkipReason, sleep } from '../hypervisor/helpers';

export const QEMU = 'qemu-system-x86_64';
export const QBOOT = '/usr/share/qemu/qboot.rom';
const UDP_TOOL_SOURCE = path.join(REPO_ROOT, 'test/net/udp-tool.c');
/** Which baton-hv to run: this tree's bin/baton-hv.js, or another build (e.g. an installed one). */
const BATON_HV = process.env.BATON_HV_ENTRY ?? HV_ENTRY;

/** Why these tests cannot run here (printed by each test), or undefined. */
export function netSkipReason(): string | undefined {
  const hv = hvSkipReason();
  if (hv) return hv;
  if (process.getuid?.() !== 0) return 'network tests: creating namespaces and TAPs needs root';
  if (!fs.existsSync('/dev/net/tun')) return 'network tests: /dev/net/tun is missing';
  if (spawnSync('ip', ['-V']).status !== 0) return 'network tests: iproute2 (ip) is not installed';
  if (spawnSync('gcc', ['--version']).status !== 0) return 'network tests: gcc (for the host UDP tool) is not installed';
  return undefined;
}

export function qemuSkipReason(): string | undefined {
  return spawnSync(QEMU, ['--version']).status === 0 ? undefined : `${QEMU} is not installed`;
}

/** Builds udp-tool into `dir` (once per dir) and returns its path. */
export function buildUdpTool(dir: string): string {
  const binary = path.join(dir, 'udp-tool');
  if (!fs.existsSync(binary)) execFileSync('gcc', ['-O2', '-Wall', '-o', binary, UDP_TOOL_SOURCE], { stdio: 'inherit' });
  return binary;
}

export interface EchoResult {
  sent: number; received: number; lost: number; corrupt: number; duplicate: number; foreign: number; bytes: number; seconds: number;
}
export interface ReceiveResult {
  received: number; bytes: number; first: number; last: number; outOfOrder: number; badPayload: number; activeSeconds: number;
}

/** One namespace with one TAP at 10.99.<subnet>.1/24; the guest is .2. */
export class NetLab {
  readonly netns: string;
  readonly subnet: number;
  readonly hostIp: string;
  readonly guestIp: string;
  readonly dir: string;
  udpTool = '';
  private readonly children: ChildProcess[] = [];
  private readonly clients: QmpClient[] = [];
  private nsCreated = false;

  constructor(tag: string) {
    this.netns = `bt-${tag}-${process.pid}`;
    this.subnet = 1 + ((process.pid + tag.length * 17) % 250);
    this.hostIp = `10.99.${this.subnet}.1`;
    this.guestIp = `10.99.${this.subnet}.2`;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `bt-net-${tag}-`));
  }

  /** A TAP name unique to this process and `n` (IFNAMSIZ: at most 15 characters). */
  tapName(n: number): string {
    return `bt${process.pid % 100000}n${n}`;
  }

  setUp(): void {
    execFileSync('ip', ['netns', 'add', this.netns]);
    this.nsCreated = true;
    this.ip(['link', 'set', 'lo', 'up']);
    this.udpTool = buildUdpTool(this.dir);
  }

  /** `ip -n NS ...` */
  ip(args: string[]): string {
    return execFileSync('ip', ['-n', this.netns, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** Moves a TAP from the root namespace into ours (open fds keep working) and configures it. */
  adoptTap(ifname: string): void {
    execFileSync('ip', ['link', 'set', ifname, 'netns', this.netns]);
    this.configureTap(ifname);
  }

  configureTap(ifname: string): void {
    this.ip(['addr', 'add', `${this.hostIp}/24`, 'dev', ifname]);
    this.ip(['link', 'set', ifname, 'up']);
    // No IPv6 chatter (router solicitations, MLD) in the guest's counts.
    execFileSync('ip', ['netns', 'exec', this.netns, 'sh', '-c', `echo 1 > /proc/sys/net/ipv6/conf/${ifname}/disable_ipv6`]);
  }

  /** A persistent TAP made inside the namespace (outlives the processes that open it). */
  createPersistentTap(ifname: string, multiQueue = false): void {
    this.ip(['tuntap', 'add', 'dev', ifname, 'mode', 'tap', ...(multiQueue ? ['multi_queue'] : [])]);
    this.configureTap(ifname);
  }

  removeTapIfPresent(ifname: string): void {
    spawnSync('ip', ['-n', this.netns, 'link', 'del', ifname]);
  }

  ping(count: number, intervalS: number, waitS = 1): { transmitted: number; received: number; avgMs: number; output: string } {
    const r = spawnSync('ip', ['netns', 'exec', this.netns, 'ping', '-q', '-c', String(count), '-i', String(intervalS), '-W', String(waitS), this.guestIp], { encoding: 'utf8' });
    const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
    const rtt = /= [\d.]+\/([\d.]+)\//.exec(r.stdout);
    if (!m) throw new Error(`ping in ${this.netns} printed no summary:\n${r.stdout}\n${r.stderr}`);
    return { transmitted: Number(m[1]), received: Number(m[2]), avgMs: rtt ? Number(rtt[1]) : NaN, output: r.stdout };
  }

  /** Runs udp-tool inside the namespace; resolves with the last JSON line it prints. */
  udp<T>(args: Array<string | number>, timeoutMs: number, onFirstLine?: (line: string) => void): { result: Promise<T>; child: ChildProcess } {
    const child = spawn('ip', ['netns', 'exec', this.netns, this.udpTool, ...args.map(String)], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.push(child);
    let stdout = '';
    let stderr = '';
    let sawFirst = false;
    child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
      if (!sawFirst && stdout.includes('\n')) {
        sawFirst = true;
        onFirstLine?.(stdout.split('\n')[0]);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const result = new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => killPid(child.pid), timeoutMs);
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        const last = stdout.trim().split('\n').pop() ?? '';
        if (code === 0) resolve(JSON.parse(last) as T);
        else reject(new Error(`udp-tool ${args.join(' ')} in ${this.netns} failed (code ${code}, signal ${signal}):\n${stdout}\n${stderr}`));
      });
    });
    return { result, child };
  }

  echo(count: number, options: { minSize?: number; maxSize?: number; window?: number; sockets?: number; lossTimeoutMs?: number; timeoutS?: number } = {}): Promise<EchoResult> {
    const o = { minSize: 8, maxSize: 1472, window: 128, sockets: 4, lossTimeoutMs: 2000, timeoutS: 120, ...options };
    return this.udp<EchoResult>(['echo', this.guestIp, 7, count, o.minSize, o.maxSize, o.window, o.sockets, o.lossTimeoutMs, o.timeoutS],
      (o.timeoutS + 30) * 1000).result;
  }

  /** Starts a baton-hv process; `inNetns` runs it inside the namespace (TAP names resolve there). */
  startHv(tag: string, args: string[], options: { inNetns?: boolean; extraFds?: number[] } = {}): GuestRun {
    const serialLog = path.join(this.dir, `${tag}.serial.log`);
    const monitor = path.join(this.dir, `${tag}.qmp`);
    const full = [BATON_HV, '--monitor', monitor, '--serial-log', serialLog, ...args];
    const [command, argv] = options.inNetns
      ? ['ip', ['netns', 'exec', this.netns, process.execPath, ...full]]
      : [process.execPath, full];
    const run = new GuestRun(`baton-hv ${tag}`, command, argv, monitor, { serialLog, extraFds: options.extraFds });
    this.children.push(run.child);
    return run;
  }

  /** Starts QEMU (pc + qboot) inside the namespace with the test guest and a virtio-net-pci on `netdev`. */
  startQemu(tag: string, append: string, netdev: string, device: string, extra: string[] = []): GuestRun {
    const monitor = path.join(this.dir, `${tag}.qmp`);
    const args = [
      '-machine', 'pc,accel=kvm', ...(fs.existsSync(QBOOT) ? ['-bios', QBOOT] : []),
      '-cpu', 'host', '-m', '128', '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio',
      '-kernel', TEST_GUEST_ELF, '-append', append, '-netdev', netdev, '-device', device,
      '-qmp', `unix:${monitor},server=on,wait=off`, ...extra,
    ];
    const run = new GuestRun(`qemu ${tag}`, 'ip', ['netns', 'exec', this.netns, QEMU, ...args], monitor, {});
    this.children.push(run.child);
    return run;
  }

  async qmp(run: GuestRun, fdPassing = false): Promise<QmpClient> {
    const client = await run.qmp(fdPassing);
    this.clients.push(client);
    return client;
  }

  async cleanup(): Promise<void> {
    for (const c of this.clients.splice(0)) c.close();
    const children = this.children.splice(0);
    for (const c of children) killPid(c.pid);
    await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)))));
    if (this.nsCreated) spawnSync('ip', ['netns', 'del', this.netns]);
    this.nsCreated = false;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function killPid(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** A hypervisor process running the test guest: its serial output (file or stdout) and its monitor. */
export class GuestRun {
  readonly child: ChildProcess;
  private stdout = '';
  stderr = '';
  exitStatus?: { code: number | null; signal: NodeJS.Signals | null };
  readonly exited: Promise<void>;

  constructor(readonly name: string, command: string, args: string[], readonly monitorPath: string,
    private readonly options: { serialLog?: string; extraFds?: number[] }) {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'pipe', 'pipe', ...(options.extraFds ?? [])];
    this.child = spawn(command, args, { stdio });
    this.child.stdout!.setEncoding('latin1').on('data', (c: string) => (this.stdout += c));
    this.child.stderr!.setEncoding('utf8').on('data', (c: string) => (this.stderr += c));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => {
      this.exitStatus = { code, signal };
      resolve();
    }));
  }

  get pid(): number {
    return this.child.pid as number;
  }

  serial(): string {
    if (!this.options.serialLog) return this.stdout;
    try {
      return fs.readFileSync(this.options.serialLog, 'latin1');
    } catch {
      return '';
    }
  }

  describe(): string {
    return `${this.name}: exit ${JSON.stringify(this.exitStatus ?? 'running')}\nserial:\n${this.serial().slice(-2000)}\nstderr:\n${this.stderr.slice(-2000)}`;
  }

  /** Waits for a serial match; rejects on timeout or exit. */
  async waitFor(pattern: RegExp, timeoutMs = 20_000, accept: (m: RegExpMatchArray) => boolean = () => true): Promise<RegExpMatchArray> {
    const global = new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = [...this.serial().matchAll(global)].find(accept);
      if (match) return match;
      if (this.exitStatus) throw new Error(`${this.name} exited while waiting for ${pattern}\n${this.describe()}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${pattern}\n${this.describe()}`);
      await sleep(20);
    }
  }

  count(pattern: RegExp): number {
    return [...this.serial().matchAll(new RegExp(pattern.source, 'gm'))].length;
  }

  async qmp(fdPassing: boolean, timeoutMs = 15_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.exitStatus) throw new Error(`${this.name} exited before its monitor answered\n${this.describe()}`);
      if (fs.existsSync(this.monitorPath)) {
        try {
          return await QmpClient.connect(this.monitorPath, { timeoutMs: 10_000, fdPassing });
        } catch (err) {
          if (Date.now() > deadline) throw err;
        }
      }
      if (Date.now() > deadline) throw new Error(`monitor ${this.monitorPath} did not appear\n${this.describe()}`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    if (!this.exitStatus) killPid(this.child.pid);
    await this.exited;
  }
}

/** The `net up` line of the test guest for this address. */
export function netUpLine(guestIp: string): RegExp {
  return new RegExp(`^baton-testguest: net up mac \\S+ ip ${guestIp.replace(/\./g, '\\.')}$`, 'm');
}

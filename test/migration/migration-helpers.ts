/**
 * Shared by the local-migration tests: a network namespace with the source's TAP in it
 * (NetLab), baton-hv processes started inside that namespace — a source that opens the TAP
 * by name, destinations waiting with `--incoming defer` — one migration driven over QMP
 * the way QEMU's tooling drives one, and the host-side traffic that watches the guest
 * through it: `ping -D` and seq-stream.c (an ordered UDP stream through the guest's echo
 * port). Everything started here is ended by pid in `cleanup()`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { QmpClient, QmpEvent } from '../../src/hypervisor/monitor';
import { HV_ENTRY, REPO_ROOT, TEST_GUEST_ELF, sleep } from '../hypervisor/helpers';
import { GuestRun, NetLab, killPid, netUpLine } from '../net/net-helpers';

export const GUEST_MAC = '52:54:00:6d:69:67';
export const NIC = `virtio-net-pci,netdev=n0,id=nic0,mac=${GUEST_MAC}`;
export const INCOMING_NETDEV = 'tap,id=n0,incoming-fds=true,script=no,downscript=no';
export const tapByName = (ifname: string): string => `tap,id=n0,ifname=${ifname},script=no,downscript=no`;
export const BOOT_MS = 20_000;
/** One migration end to end on a loaded 2-core machine: generous, never a speed claim. */
export const MIGRATION_MS = 30_000;
const SEQ_STREAM_SOURCE = path.join(REPO_ROOT, 'test/migration/seq-stream.c');

/** A baton-hv process and its monitor. */
export interface Hv {
  tag: string;
  run: GuestRun;
  qmp: QmpClient;
}

export interface MigrationOutcome {
  status: string;
  /** query-migrate on the source once the migration ended. */
  info: { status?: string; downtime?: number; 'total-time'?: number; 'setup-time'?: number; ram?: { transferred: number; total: number }; 'error-desc'?: string };
  sourceEvents: QmpEvent[];
  destinationEvents: QmpEvent[];
  wallMs: number;
}

export interface PingResult {
  transmitted: number;
  received: number;
  /** Sequence numbers never answered, the one in flight when ping was stopped excepted. */
  lost: number;
  /** Longest silence between two consecutive replies (from `-D` timestamps). */
  maxGapMs: number;
  output: string;
}

export interface SeqStreamResult {
  sent: number; received: number; missing: number; reordered: number; duplicate: number; corrupt: number;
  sendErrors: number; seconds: number; maxGapMs: number; maxRttMs: number; gaps: { atS: number; ms: number }[];
}

/** A host-side traffic process running until stopped. */
export interface Traffic<T> {
  child: ChildProcess;
  /** Resolves once traffic flows (first reply). */
  flowing: Promise<void>;
  /** SIGINT, then the parsed result. */
  stop(): Promise<T>;
}

export class MigrationLab {
  readonly net: NetLab;
  /** The TAP the source creates and every destination inherits by fd. */
  readonly tap: string;
  /**
   * One serial log for a whole chain of processes (a new one per source started): a reboot
   * anywhere in the chain would show as a second `ready`.
   */
  serialLog: string;
  private seqStreamBinary = '';
  private readonly runs: GuestRun[] = [];
  private readonly clients: QmpClient[] = [];
  private readonly helpers: ChildProcess[] = [];
  private migrationCount = 0;

  constructor(tag: string) {
    this.net = new NetLab(tag);
    this.tap = this.net.tapName(0);
    this.serialLog = path.join(this.net.dir, 'chain.serial.log');
  }

  setUp(): void {
    this.net.setUp();
    this.seqStreamBinary = path.join(this.net.dir, 'seq-stream');
    execFileSync('gcc', ['-O2', '-Wall', '-o', this.seqStreamBinary, SEQ_STREAM_SOURCE], { stdio: 'inherit' });
  }

  path(name: string): string {
    return path.join(this.net.dir, name);
  }

  /** baton-hv inside the namespace (TAP names resolve there); its pid is the process's (ip execs in place). */
  startHv(tag: string, args: string[], options: { serialLog?: string } = {}): GuestRun {
    const monitor = this.path(`${tag}.qmp`);
    const serialLog = options.serialLog ?? this.serialLog;
    const argv = ['netns', 'exec', this.net.netns, process.execPath, HV_ENTRY, '--monitor', monitor, '--serial-log', serialLog, ...args];
    const run = new GuestRun(`baton-hv ${tag}`, 'ip', argv, monitor, { serialLog });
    this.runs.push(run);
    return run;
  }

  async connect(run: GuestRun, tag: string): Promise<Hv> {
    const qmp = await run.qmp(false);
    this.clients.push(qmp);
    return { tag, run, qmp };
  }

  /** The echo guest on a TAP it creates by name in the namespace, configured and answering. */
  async startSource(options: { memMiB?: number; append?: string; extra?: string[]; tag?: string } = {}): Promise<Hv> {
    const tag = options.tag ?? 'src';
    this.serialLog = this.path(`${tag}.chain.serial.log`);
    const append = options.append ?? `echo ip=${this.net.guestIp}/24`;
    const run = this.startHv(tag, [...guestArgs(options.memMiB ?? 128, append), '--netdev', tapByName(this.tap), '--device', NIC, ...(options.extra ?? [])]);
    await this.waitForLink(this.tap, run);
    this.net.configureTap(this.tap);
    await run.waitFor(netUpLine(this.net.guestIp), BOOT_MS);
    return this.connect(run, tag);
  }

  /** A destination waiting for a migration; by default its netdev waits for the source's TAP fds. */
  async startDestination(tag: string, options: { memMiB?: number; netdev?: string | null; extra?: string[] } = {}): Promise<Hv> {
    const netdev = options.netdev === undefined ? INCOMING_NETDEV : options.netdev;
    const nic = netdev === null ? [] : ['--netdev', netdev, '--device', NIC];
    const run = this.startHv(tag, [...guestArgs(options.memMiB ?? 128), '--incoming', 'defer', ...nic, ...(options.extra ?? [])]);
    return this.connect(run, tag);
  }

  async waitForLink(ifname: string, run: GuestRun): Promise<void> {
    const deadline = Date.now() + BOOT_MS;
    for (;;) {
      try {
        this.net.ip(['link', 'show', ifname]);
        return;
      } catch {
        if (run.exitStatus) throw new Error(`${run.name} exited before creating ${ifname}\n${run.describe()}`);
        if (Date.now() > deadline) throw new Error(`TAP ${ifname} did not appear in ${this.net.netns}\n${run.describe()}`);
        await sleep(20);
      }
    }
  }

  /** `ip -n NS -o link` as name → ifindex. */
  links(): Map<string, number> {
    const out = this.net.ip(['-o', 'link', 'show']);
    return new Map([...out.matchAll(/^(\d+): ([^:@]+)[:@]/gm)].map((m) => [m[2], Number(m[1])]));
  }

  /** Fresh migration socket path. */
  migrationUri(): string {
    return `unix:${this.path(`mig${this.migrationCount++}.sock`)}`;
  }

  /**
   * One migration as QEMU's tooling drives it: events on both sides, `local` on the source
   * as asked, `migrate-incoming` (answers once the destination listens), `migrate`, then the
   * source's final MIGRATION status and query-migrate.
   */
  async migrate(source: Hv, destination: Hv, options: { local: boolean; uri?: string }): Promise<MigrationOutcome> {
    const events = [{ capability: 'events', state: true }];
    await source.qmp.execute('migrate-set-capabilities', { capabilities: events });
    await destination.qmp.execute('migrate-set-capabilities', { capabilities: events });
    await source.qmp.execute('migrate-set-parameters', { local: options.local });
    const uri = options.uri ?? this.migrationUri();
    await destination.qmp.execute('migrate-incoming', { uri });
    const sourceEvents: QmpEvent[] = [];
    const destinationEvents: QmpEvent[] = [];
    const offSource = source.qmp.onEvent((e) => sourceEvents.push(e));
    const offDestination = destination.qmp.onEvent((e) => destinationEvents.push(e));
    try {
      const ended = source.qmp.waitEvent('MIGRATION', (e) => ['completed', 'failed', 'cancelled'].includes(e.data?.status as string), MIGRATION_MS);
      const t0 = Date.now();
      await source.qmp.execute('migrate', { uri });
      const status = (await ended).data?.status as string;
      const wallMs = Date.now() - t0;
      const info = await source.qmp.execute<MigrationOutcome['info']>('query-migrate');
      if (status === 'completed') {
        // The destination's own `completed` may trail the source's by a moment.
        await destination.qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'completed', MIGRATION_MS, { includePast: true });
      }
      return { status, info, sourceEvents, destinationEvents, wallMs };
    } finally {
      offSource();
      offDestination();
    }
  }

  /**
   * A migration that copies RAM to a destination on a TAP of its own (the new-tap way), over
   * `uri` (a fresh UNIX socket by default): checks it completed with RAM copied, retires the
   * source (its TAP goes with it), moves the host address to the new TAP and checks that the
   * same guest (one boot, counters going on) answers there. Returns the outcome.
   */
  async copyToNewTap(tag: string, memMiB: number, uri?: string): Promise<MigrationOutcome> {
    const source = await this.startSource({ tag: `${tag}-src`, memMiB, append: `echo ip=${this.net.guestIp}/24 report_ms=200` });
    const newTap = this.net.tapName(1);
    const destination = await this.startDestination(`${tag}-dst`, { memMiB, netdev: tapByName(newTap) });
    await this.waitForLink(newTap, destination.run);
    const reportsBefore = echoReports(this.chainSerial()).length;

    const outcome = await this.migrate(source, destination, { local: false, uri });
    expect(`${outcome.status} ${outcome.info['error-desc'] ?? ''}`.trim()).toBe('completed');
    expect(outcome.info.ram?.transferred).toBeGreaterThan(0);
    expect(outcome.info.ram?.total).toBe(memMiB * 1024 * 1024);
    expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
    expect(await destination.qmp.execute('query-status')).toMatchObject({ status: 'running' });

    await this.retire(source);
    expect(this.links().has(this.tap)).toBe(false);
    this.net.configureTap(newTap);
    expect(this.net.ping(50, 0.005)).toMatchObject({ transmitted: 50, received: 50 });

    await sleep(500);
    const reports = echoReports(this.chainSerial());
    expect(reports.length).toBeGreaterThan(reportsBefore);
    for (let i = 1; i < reports.length; i++) expect(reports[i].frames).toBeGreaterThanOrEqual(reports[i - 1].frames);
    expect(this.readyCount()).toBe(1);
    await this.retire(destination);
    return outcome;
  }

  /** Quits a source after a completed migration and waits for its process to end. */
  async retire(hv: Hv): Promise<void> {
    await hv.qmp.execute('quit').catch(() => undefined);
    await hv.run.exited;
    hv.qmp.close();
  }

  /** `ping -D -i INTERVAL` to the guest until stopped. */
  startPing(intervalS = 0.002): Traffic<PingResult> {
    const child = spawn('ip', ['netns', 'exec', this.net.netns, 'ping', '-D', '-i', String(intervalS), '-W', '1', this.net.guestIp], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.helpers.push(child);
    let output = '';
    let markFlowing: () => void = () => undefined;
    const flowing = new Promise<void>((resolve) => (markFlowing = resolve));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      output += d;
      if (/icmp_seq=/.test(output)) markFlowing();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    return {
      child,
      flowing,
      stop: async () => {
        child.kill('SIGINT');
        await exited;
        return parsePing(output);
      },
    };
  }

  /** seq-stream (see seq-stream.c) to the guest's echo port until stopped. */
  startSeqStream(ratePerS: number, size: number, maxSeconds = 600): Traffic<SeqStreamResult> {
    const child = spawn('ip', ['netns', 'exec', this.net.netns, this.seqStreamBinary, this.net.guestIp, '7', String(ratePerS), String(size), String(maxSeconds), '2000'],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    this.helpers.push(child);
    let stdout = '';
    let stderr = '';
    let markFlowing: () => void = () => undefined;
    const flowing = new Promise<void>((resolve) => (markFlowing = resolve));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (stdout.includes('firstReply')) markFlowing();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return {
      child,
      flowing,
      stop: async () => {
        child.kill('SIGINT');
        const code = await exited;
        if (code !== 0) throw new Error(`seq-stream failed (exit ${code}): ${stdout}\n${stderr}`);
        return JSON.parse(stdout.trim().split('\n').pop() as string) as SeqStreamResult;
      },
    };
  }

  /** The chain's serial log so far. */
  chainSerial(): string {
    return readText(this.serialLog);
  }

  /** Guest `ready` lines in the chain's serial log (1 = it never rebooted). */
  readyCount(): number {
    return (readText(this.serialLog).match(/^baton-testguest: ready$/gm) ?? []).length;
  }

  async cleanup(): Promise<void> {
    for (const c of this.clients.splice(0)) c.close();
    for (const h of this.helpers.splice(0)) killPid(h.pid);
    const runs = this.runs.splice(0);
    await Promise.all(runs.map((r) => r.stop()));
    await this.net.cleanup();
  }
}

export function guestArgs(memMiB: number, append?: string): string[] {
  return ['--kernel', TEST_GUEST_ELF, ...(append === undefined ? [] : ['--append', append]), '-m', String(memMiB), '--smp', '1'];
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'latin1');
  } catch {
    return '';
  }
}

/** Replies and gaps from `ping -D` output; the last request may have been in flight at SIGINT. */
export function parsePing(output: string): PingResult {
  const summary = /(\d+) packets transmitted, (\d+) received/.exec(output);
  if (!summary) throw new Error(`ping printed no summary:\n${output.slice(-2000)}`);
  const transmitted = Number(summary[1]);
  const replied = new Set<number>();
  let maxGapMs = 0;
  let last = 0;
  for (const m of output.matchAll(/^\[(\d+\.\d+)\] .*icmp_seq=(\d+)/gm)) {
    const at = Number(m[1]) * 1000;
    if (last) maxGapMs = Math.max(maxGapMs, at - last);
    last = at;
    replied.add(Number(m[2]));
  }
  let lost = 0;
  for (let seq = 1; seq < transmitted; seq++) if (!replied.has(seq % 65536)) lost++;
  return { transmitted, received: Number(summary[2]), lost, maxGapMs, output };
}

/** Echo counters the guest prints with `report_ms` (`echo frames F replies R dropped D`). */
export function echoReports(serial: string): { frames: number; replies: number; dropped: number }[] {
  return [...serial.matchAll(/^echo frames (\d+) replies (\d+) dropped (\d+)\n/gm)].map((m) => ({ frames: Number(m[1]), replies: Number(m[2]), dropped: Number(m[3]) }));
}

/**
 * The lab of one test file: set up before its tests (unless they are to be skipped, as
 * `skipReason` says) and cleaned up after them, however they ended.
 */
export function migrationLabForSuite(tag: string, skipReason: string | undefined): MigrationLab {
  const lab = new MigrationLab(tag);
  beforeAll(() => {
    if (!skipReason) lab.setUp();
  }, 60_000);
  afterAll(async () => {
    await lab.cleanup();
  }, 60_000);
  return lab;
}

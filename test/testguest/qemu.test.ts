/**
 * The test guest (test/guest/) booted by QEMU on the real /dev/kvm: proves the PVH ELF,
 * its ring-3 counter, its ring-0 wait and its power-off/reset paths against a VMM nobody
 * here wrote, before baton-hv boots the same file.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { QEMU, QemuRun } from './qemu-run';

const GUEST_DIR = path.resolve(__dirname, '../guest');
const GUEST_ELF = path.join(GUEST_DIR, 'build/testguest.elf');
const READY_LINE = 'baton-testguest: ready\n';
/** SeaBIOS and the PVH option ROM run at emulated ring 0 here: ~2 s; allow for load. */
const PC_BOOT_TIMEOUT_MS = 30_000;
const MICROVM_BOOT_TIMEOUT_MS = 10_000;

function reasonToSkip(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return 'test guest under QEMU: /dev/kvm is not usable here';
  }
  if (spawnSync(QEMU, ['--version']).status !== 0) return `test guest under QEMU: ${QEMU} is not installed`;
  return undefined;
}
const skipReason = reasonToSkip();

/** A minimal QMP client: greeting, qmp_capabilities, commands in order, events kept. */
class Qmp {
  readonly events: Array<{ event: string; data?: Record<string, unknown> }> = [];
  private buffer = '';
  private readonly pending: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8').on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const message = JSON.parse(this.buffer.slice(0, newline)) as Record<string, unknown>;
        this.buffer = this.buffer.slice(newline + 1);
        if ('event' in message) this.events.push(message as { event: string; data?: Record<string, unknown> });
        else if ('return' in message) this.pending.shift()?.resolve(message.return);
        else if ('error' in message) this.pending.shift()?.reject(new Error(`QMP error: ${JSON.stringify(message.error)}`));
        /* the greeting ({"QMP": ...}) needs no answer */
      }
    });
  }

  /** QEMU creates the socket early in start-up; retry until it accepts. */
  static async connect(socketPath: string, timeoutMs: number): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath, () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(socket);
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`cannot connect to QMP socket ${socketPath}: ${String(error)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

interface Tick {
  n: number;
  tsc: bigint;
}

function parseTicks(serial: string): Tick[] {
  // complete lines only: a chunk may end in the middle of one
  return [...serial.matchAll(/^tick (\d+) tsc (\d+)\n/gm)].map((m) => ({ n: Number(m[1]), tsc: BigInt(m[2]) }));
}

function parseTscKhz(serial: string): number {
  const m = /^baton-testguest: counter interval_ms \d+ wait ring[03] tsc_khz (\d+) source (\S+)\n/m.exec(serial);
  if (!m) throw new Error(`no counter header line in serial output:\n${serial}`);
  return Number(m[1]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const runs: QemuRun[] = [];
let tempDir: string;

function qemu(machine: string, append: string, extra: string[] = []): QemuRun {
  const run = new QemuRun([
    '-machine', machine, '-cpu', 'host', '-m', '128', '-nodefaults', '-no-user-config',
    // -display none rather than -nographic: with -nographic SeaBIOS (pc) also writes to the serial port
    '-display', 'none', '-serial', 'stdio',
    '-kernel', GUEST_ELF, '-append', append, ...extra,
  ]);
  runs.push(run);
  return run;
}

/** Boots `counter`, checks ticks are consecutive with rising TSC at about the interval. */
async function expectCounter(run: QemuRun, intervalMs: number, bootTimeoutMs: number): Promise<number> {
  await run.waitForLine(READY_LINE, bootTimeoutMs);
  const readyMs = run.elapsedMs();
  expect(run.serial.startsWith(READY_LINE)).toBe(true); // the very first line
  const wanted = 6;
  await run.waitForSerial((s) => parseTicks(s).length >= wanted, `${wanted} ticks`, 10_000 + 50 * intervalMs * wanted);
  const ticks = parseTicks(run.serial).slice(0, wanted);
  const tscKhz = parseTscKhz(run.serial);
  expect(tscKhz).toBeGreaterThan(100_000); // > 100 MHz: a plausible TSC
  ticks.forEach((tick, i) => expect(tick.n).toBe(i));
  const intervalsMs = ticks.slice(1).map((tick, i) => {
    expect(tick.tsc).toBeGreaterThan(ticks[i].tsc);
    return Number(tick.tsc - ticks[i].tsc) / tscKhz;
  });
  // A loaded 2-core machine delays single ticks; the median still shows the schedule.
  expect(median(intervalsMs)).toBeGreaterThan(intervalMs * 0.5);
  expect(median(intervalsMs)).toBeLessThan(intervalMs * 3);
  return readyMs;
}

beforeAll(() => {
  if (skipReason) return;
  execFileSync('make', ['-s', '-C', GUEST_DIR], { stdio: 'inherit' });
  tempDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-testguest-'));
}, 120_000);

afterEach(() => {
  runs.splice(0).forEach((run) => run.kill());
});

afterAll(() => {
  runs.splice(0).forEach((run) => run.kill());
  if (tempDir) fs.rmSync(tempDir, { recursive: true, force: true });
});

describe('test guest under QEMU microvm', () => {
  it('is ready quickly and counts in ring 3', async () => {
    if (skipReason) return console.warn(skipReason);
    const readyMs = await expectCounter(qemu('microvm,accel=kvm', 'counter interval_ms=20'), 20, MICROVM_BOOT_TIMEOUT_MS);
    console.log(`microvm: QEMU spawn to "ready" ${readyMs.toFixed(1)} ms`);
  });

  it('counts while waiting for its LAPIC timer in ring 0 (wait=ring0)', async () => {
    if (skipReason) return console.warn(skipReason);
    const run = qemu('microvm,accel=kvm', 'counter interval_ms=20 wait=ring0');
    await expectCounter(run, 20, MICROVM_BOOT_TIMEOUT_MS);
    expect(run.serial).toContain('wait ring0');
  });

  it('reports an unknown mode and tries to power off (microvm has no PM1a at 0x604)', async () => {
    if (skipReason) return console.warn(skipReason);
    const run = qemu('microvm,accel=kvm', 'no-such-mode interval_ms=5');
    await run.waitForLine('baton-testguest: unknown mode no-such-mode\n', MICROVM_BOOT_TIMEOUT_MS);
    await run.waitForLine('baton-testguest: powering off\n', 5_000);
    await run.waitForLine('baton-testguest: power-off failed\n', 10_000);
  });
});

describe('test guest under QEMU pc (SeaBIOS, i8042, PIIX4 PM)', () => {
  it('boots and counts', async () => {
    if (skipReason) return console.warn(skipReason);
    const readyMs = await expectCounter(qemu('pc,accel=kvm', 'counter interval_ms=20'), 20, PC_BOOT_TIMEOUT_MS);
    console.log(`pc: QEMU spawn to "ready" ${readyMs.toFixed(0)} ms`);
  });

  it('powers off gracefully on Ctrl-Alt-Del (QMP send-key)', async () => {
    if (skipReason) return console.warn(skipReason);
    const qmpPath = path.join(tempDir, 'powerdown.qmp');
    const run = qemu('pc,accel=kvm', 'counter interval_ms=10 wait=ring0', ['-qmp', `unix:${qmpPath},server=on,wait=off`]);
    const qmp = await Qmp.connect(qmpPath, 10_000);
    try {
      await run.waitForSerial((s) => parseTicks(s).length >= 2, '2 ticks', PC_BOOT_TIMEOUT_MS);
      await qmp.execute('send-key', { keys: ['ctrl', 'alt', 'delete'].map((key) => ({ type: 'qcode', data: key })) });
      await run.waitForLine('baton-testguest: powering off\n', 10_000);
      expect(await run.waitForExit(10_000)).toEqual({ code: 0, signal: null });
      expect(run.serial).not.toContain('power-off failed');
      expect(qmp.events.find((e) => e.event === 'SHUTDOWN')?.data).toMatchObject({ guest: true, reason: 'guest-shutdown' });
    } finally {
      qmp.close();
    }
  });

  it('resets through the i8042 in reboot-test mode', async () => {
    if (skipReason) return console.warn(skipReason);
    const qmpPath = path.join(tempDir, 'reset.qmp');
    // -no-reboot: QEMU exits on the guest's reset instead of booting it again
    const run = qemu('pc,accel=kvm', 'reboot-test', ['-no-reboot', '-qmp', `unix:${qmpPath},server=on,wait=off`]);
    const qmp = await Qmp.connect(qmpPath, 10_000);
    try {
      await run.waitForLine(READY_LINE, PC_BOOT_TIMEOUT_MS);
      await run.waitForLine('baton-testguest: resetting\n', 5_000);
      expect(await run.waitForExit(10_000)).toEqual({ code: 0, signal: null });
      expect(run.serial).not.toContain('reset failed');
      expect(qmp.events.find((e) => e.event === 'SHUTDOWN')?.data).toMatchObject({ guest: true, reason: 'guest-reset' });
    } finally {
      qmp.close();
    }
  });
});

/**
 * A corrupt or truncated save file is refused by the restoring process with a message that
 * names the section at fault, and the process exits non-zero — it never hangs and never
 * runs a half-restored guest. One real save is made, then damaged in many ways.
 */
import fs from 'node:fs';
import path from 'node:path';
import { HEADER_SIZE, TAG_END, TAG_SECTION } from '../../src/hypervisor/migration/stream-format';
import { HvProcess, HvTracker, hvSkipReason, waitForStatus } from './helpers';

const skipReason = hvSkipReason();
const hv = new HvTracker();
afterAll(() => hv.cleanup());

/** Where each section of a state stream sits in the file (see stream-format.ts). */
interface SectionExtent {
  name: string;
  start: number;        // the tag byte
  versionAt: number;
  payloadAt: number;
  payloadLength: number;
  end: number;          // one past the CRC
}

function sectionsOf(stream: Buffer): { sections: SectionExtent[]; endMarkerAt: number } {
  const sections: SectionExtent[] = [];
  let p = HEADER_SIZE;
  for (;;) {
    const tag = stream[p];
    if (tag === TAG_END) return { sections, endMarkerAt: p };
    if (tag !== TAG_SECTION) throw new Error(`unexpected tag 0x${tag.toString(16)} at ${p}`);
    const nameLength = stream.readUInt16LE(p + 1);
    const name = stream.toString('utf8', p + 3, p + 3 + nameLength);
    const versionAt = p + 3 + nameLength;
    const payloadLength = Number(stream.readBigUInt64LE(versionAt + 4));
    const payloadAt = versionAt + 12;
    const end = payloadAt + payloadLength + 4;
    sections.push({ name, start: p, versionAt, payloadAt, payloadLength, end });
    p = end;
  }
}

let saveFile = '';
let sourceArgs: string[] = [];
let workDir = '';

beforeAll(async () => {
  if (skipReason) return;
  const source = hv.start('corrupt-src', { append: 'counter interval_ms=20', vcpus: 2 });
  const qmp = await hv.qmp(source);
  await source.waitForTick(2);
  saveFile = path.join(source.dir, 'vm.state');
  const done = qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'completed', 15_000);
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  await qmp.execute('migrate', { uri: `file:${saveFile}` });
  await done;
  await qmp.execute('quit');
  await source.waitExit();
  sourceArgs = source.args.filter((a, i, all) => !['--monitor', '--serial-log'].includes(a) && !['--monitor', '--serial-log'].includes(all[i - 1]));
  workDir = hv.tempDir('corrupt');
}, 30_000);

/** Starts a process that restores `file`, with `extra` flags; returns it and its monitor path. */
function restoreFrom(tag: string, file: string, extra: string[] = []): HvProcess {
  const dir = path.join(workDir, tag);
  fs.mkdirSync(dir);
  return hv.spawnRaw([...sourceArgs, ...extra, '--monitor', path.join(dir, 'qmp.sock'), '--serial-log', path.join(dir, 'serial.log'), '--incoming', `file:${file}`], dir);
}

interface Damage {
  what: string;
  /** Returns the damaged copy of the stream. */
  damage: (stream: Buffer, layout: ReturnType<typeof sectionsOf>) => Buffer;
  /** What stderr must say (the section named). */
  expected: RegExp;
  extra?: string[];
}

function section(layout: ReturnType<typeof sectionsOf>, name: string, nth = 0): SectionExtent {
  const found = layout.sections.filter((s) => s.name === name)[nth];
  if (!found) throw new Error(`the save has no section ${name} #${nth}: ${layout.sections.map((s) => s.name).join(', ')}`);
  return found;
}

function flipped(stream: Buffer, at: number): Buffer {
  const copy = Buffer.from(stream);
  copy[at] ^= 0x5a;
  return copy;
}

const DAMAGES: Damage[] = [
  {
    what: 'a byte flipped in the middle of a RAM chunk',
    damage: (s, l) => { const r = section(l, 'ram'); return flipped(s, r.payloadAt + Math.floor(r.payloadLength / 2)); },
    expected: /section "ram": checksum mismatch/,
  },
  {
    what: 'a byte flipped in the middle of the cpu/0 section',
    damage: (s, l) => { const c = section(l, 'cpu/0'); return flipped(s, c.payloadAt + Math.floor(c.payloadLength / 2)); },
    expected: /section "cpu\/0": checksum mismatch/,
  },
  {
    what: 'a byte flipped in the cpu/1 checksum',
    damage: (s, l) => flipped(s, section(l, 'cpu/1').end - 2),
    expected: /section "cpu\/1": checksum mismatch/,
  },
  {
    what: 'cpu/0 claiming a newer section version',
    damage: (s, l) => { const copy = Buffer.from(s); copy.writeUInt32LE(2, section(l, 'cpu/0').versionAt); return copy; },
    expected: /section "cpu\/0": section version 2 is newer/,
  },
  {
    what: 'a corrupt payload length in kvm/irqchip',
    damage: (s, l) => { const copy = Buffer.from(s); copy.writeBigUInt64LE(1n << 40n, section(l, 'kvm/irqchip').versionAt + 4); return copy; },
    expected: /section "kvm\/irqchip": payload length \d+ is implausible/,
  },
  {
    what: 'truncated inside the header',
    damage: (s) => s.subarray(0, 10),
    expected: /section "header": truncated/,
  },
  {
    what: 'truncated in the middle of a RAM chunk',
    damage: (s, l) => { const r = section(l, 'ram'); return s.subarray(0, r.payloadAt + 1000); },
    expected: /section "ram": truncated/,
  },
  {
    what: 'truncated in the middle of cpu/0',
    damage: (s, l) => { const c = section(l, 'cpu/0'); return s.subarray(0, c.payloadAt + Math.floor(c.payloadLength / 2)); },
    expected: /section "cpu\/0": truncated/,
  },
  {
    what: 'truncated before the end marker',
    damage: (s, l) => s.subarray(0, l.endMarkerAt),
    expected: /section "after [^"]+": truncated/,
  },
  {
    what: 'a wrong magic',
    damage: (s) => { const copy = Buffer.from(s); copy.write('QEVM', 0, 'latin1'); return copy; },
    expected: /bad magic/,
  },
  {
    what: 'a wrong format version',
    damage: (s) => { const copy = Buffer.from(s); copy.writeUInt32LE(99, 8); return copy; },
    expected: /format version 99 is not supported/,
  },
  {
    what: 'a restore into a machine of another size',
    damage: (s) => s,
    extra: ['-m', '256'],
    expected: /section "machine": saved VM has 128 MiB, this one 256 MiB/,
  },
  {
    what: 'a restore into a machine with another vCPU count',
    damage: (s) => s,
    extra: ['--smp', '1'],
    expected: /section "machine": saved VM has 2 vCPUs, this one 1/,
  },
  {
    what: 'a missing file',
    damage: () => Buffer.alloc(0),
    expected: /cannot open .*ENOENT/,
  },
];

test('every damaged save is refused, naming the section, with a non-zero exit', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const stream = fs.readFileSync(saveFile);
  const layout = sectionsOf(stream);
  const names = layout.sections.map((s) => s.name);
  expect(names[0]).toBe('machine');
  expect(names).toEqual(expect.arrayContaining(['ram', 'kvm/irqchip', 'kvm/pit', 'kvm/clock', 'cpu/0', 'cpu/1', 'dev/serial0']));

  // All restores at once: each fails within its first reads.
  const runs = DAMAGES.map((d, i) => {
    const file = path.join(workDir, `damaged-${i}.state`);
    if (d.what !== 'a missing file') fs.writeFileSync(file, d.damage(stream, layout));
    return { damage: d, proc: restoreFrom(`r${i}`, file, d.extra) };
  });
  const problems: string[] = [];
  for (const { damage, proc } of runs) {
    const exit = await proc.waitExit(20_000);
    const said = proc.stderr.split('\n').find((l) => l.includes('load of migration failed')) ?? '';
    if (exit.code === 0 || exit.code === null) problems.push(`${damage.what}: exit ${JSON.stringify(exit)}\n${proc.describe()}`);
    if (!damage.expected.test(said)) problems.push(`${damage.what}: stderr does not match ${damage.expected}:\n${proc.stderr}`);
    if (proc.serial() !== '') problems.push(`${damage.what}: the guest ran:\n${proc.serial()}`);
  }
  expect(problems).toEqual([]);
}, 60_000);

test('migrate-incoming (after -incoming defer) refuses a damaged save the same way', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const stream = fs.readFileSync(saveFile);
  const cpu0 = section(sectionsOf(stream), 'cpu/0');
  const file = path.join(workDir, 'damaged-deferred.state');
  fs.writeFileSync(file, flipped(stream, cpu0.payloadAt + Math.floor(cpu0.payloadLength / 2)));
  const dir = path.join(workDir, 'deferred');
  fs.mkdirSync(dir);
  const proc = hv.spawnRaw([...sourceArgs, '--monitor', path.join(dir, 'qmp.sock'), '--serial-log', path.join(dir, 'serial.log'), '--incoming', 'defer'], dir);
  const qmp = await hv.qmp(proc);
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const failed = qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'failed', 10_000);
  failed.catch(() => undefined);
  // Answered {} once loading starts (as QEMU does), or with the error if it failed already.
  await qmp.execute('migrate-incoming', { uri: `file:${file}` }).catch(() => undefined);
  await failed;
  const exit = await proc.waitExit(10_000);
  expect(exit.code).not.toBe(0);
  expect(exit.code).not.toBeNull();
  expect(proc.stderr).toMatch(/load of migration failed: .*section "cpu\/0": checksum mismatch/);
  expect(proc.serial()).toBe('');
});

test('the undamaged save restores (the damage, not the file, is what was refused)', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const proc = restoreFrom('intact', saveFile);
  const qmp = await hv.qmp(proc);
  await waitForStatus(qmp, 'running');
  await proc.waitForSerial((s) => /\ntick \d+ tsc \d+\n/.test(s), 'a tick from the restored guest');
});

/**
 * The stock Debian 12 kernel on baton-hv, as far as this host's KVM lets it go. Its log
 * is the check on what baton-hv handed it: the e820 map, the command line, the initrd, the
 * MP table and IOAPIC, the vCPU count, the FPU. Then either the VM stops in internal-error
 * at the `int3` of int3_selftest() with RIP and instruction bytes (as QEMU 7.2 does here),
 * or — where baton-hv completes that instruction — the kernel gets past it.
 *
 * The bzImage path is proven up to the decompressor's first serial output: with Debian's
 * CONFIG_X86_VERBOSE_BOOTUP unset, "Decompressing Linux..." is never printed; what the 6.1
 * decompressor does print, once it has found the serial console, is its KASLR notice
 * (`nokaslr` is on the command line). Decompressing the XZ kernel under ring-0 emulation
 * takes many minutes, so the test stops there.
 *
 * Slow (about a minute for the PVH kernel to reach x86/fpu on this host): one process per
 * path, nothing else.
 */
import fs from 'node:fs';
import { guestImageCmdline, guestImagePaths, type GuestImagePaths } from '../../src/guest-image';
import { E820_RESERVED, e820Map, type E820Entry } from '../../src/hypervisor/boot/e820';
import { MPTABLE_ADDR } from '../../src/hypervisor/layout';
import { HvTracker, hvSkipReason, queryStatus, sleep } from './helpers';

const hv = new HvTracker();
afterEach(() => hv.cleanup());

const MEMORY_MIB = 256;
const PAGE = 4096;
/** Generous: 42-65 s here, depending on what else runs. */
const FPU_TIMEOUT_MS = 3 * 60_000;
/** After x86/fpu: the int3 of int3_selftest, or (completed) "Freeing SMP alternatives memory" ~40 s later. */
const AFTER_FPU_TIMEOUT_MS = 150_000;
const DECOMPRESSOR_TIMEOUT_MS = 2 * 60_000;

function imageOrReason(): { image?: GuestImagePaths; reason?: string } {
  const hvReason = hvSkipReason();
  if (hvReason) return { reason: hvReason };
  try {
    return { image: guestImagePaths() };
  } catch (err) {
    return { reason: `Debian guest tests: ${(err as Error).message}` };
  }
}

/** The image's default command line, without `quiet` (we read the kernel's info lines), for one CPU and no PCI/ACPI. */
function kernelCmdline(image: GuestImagePaths): string {
  const words = guestImageCmdline(image).split(/\s+/).filter((w) => w && w !== 'quiet');
  return [...words, 'nr_cpus=1', 'pci=off', 'acpi=off'].join(' ');
}

/** The kernel's own log lines, without the "[    0.000000] " timestamps. */
function kernelLines(serial: string): string[] {
  return serial.split('\n').map((l) => l.replace(/^\[\s*\d+\.\d+\]\s?/, '').replace(/\r$/, ''));
}

/**
 * The map as a PVH-booted Linux prints it: init_pvh_bootparams() (arch/x86/platform/pvh/
 * enlighten.c) adds the ISA hole 0xa0000-0xfffff as reserved to what hvm_start_info gave,
 * and e820__update_table() then merges touching entries of one type.
 */
function mapAsPvhLinuxPrintsIt(map: E820Entry[]): E820Entry[] {
  const ISA_START = 0xa0000;
  const ISA_END = 0x100000;
  const sorted = [...map, { addr: ISA_START, size: ISA_END - ISA_START, type: E820_RESERVED }].sort((a, b) => a.addr - b.addr);
  const merged: E820Entry[] = [];
  for (const e of sorted) {
    const last = merged[merged.length - 1];
    if (last && last.type === e.type && e.addr <= last.addr + last.size) {
      last.size = Math.max(last.addr + last.size, e.addr + e.size) - last.addr;
    } else {
      merged.push({ ...e });
    }
  }
  return merged;
}

function hex(n: number | bigint, digits: number): string {
  return '0x' + n.toString(16).padStart(digits, '0');
}

test('Debian 6.1 vmlinux (PVH): the kernel reports the machine baton-hv built, then stops at int3_selftest or gets past it', async () => {
  const { image, reason } = imageOrReason();
  if (!image) {
    console.warn(`skipped: ${reason}`);
    return;
  }
  const cmdline = kernelCmdline(image);
  const proc = hv.start('debian-pvh', {
    kernel: image.vmlinux, memoryMiB: MEMORY_MIB, append: cmdline, extraArgs: ['--initrd', image.initramfsUncompressed],
  });
  const qmp = await hv.qmp(proc);
  // Kernel console lines end in "\r\n" (and `.` does not match "\r").
  const serial = await proc.waitForSerial((s) => /x86\/fpu: [^\n]*\n/.test(s), 'the x86/fpu line', FPU_TIMEOUT_MS, 500);
  const fpuSeconds = proc.elapsedMs() / 1000;
  const lines = kernelLines(serial);
  const has = (pattern: RegExp) => expect(lines).toEqual(expect.arrayContaining([expect.stringMatching(pattern)]));

  expect(lines).toContain(`Command line: ${cmdline}`);
  has(/^Hypervisor detected: KVM$/);

  // The e820 map as baton-hv built it: low RAM up to the EBDA, the EBDA (MP table) and
  // BIOS area reserved, RAM from 1 MiB to the top.
  const e820Lines = lines.filter((l) => l.startsWith('BIOS-e820: '));
  const ourMap = mapAsPvhLinuxPrintsIt(e820Map(MEMORY_MIB << 20)).map((e) =>
    `BIOS-e820: [mem ${hex(e.addr, 16)}-${hex(e.addr + e.size - 1, 16)}] ${e.type === 1 ? 'usable' : 'reserved'}`);
  expect(lines).toContain('BIOS-provided physical RAM map:');
  expect(e820Lines).toEqual(ourMap);
  expect(e820Lines[0]).toBe('BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable');
  expect(e820Lines[1]).toMatch(/^BIOS-e820: \[mem 0x000000000009fc00-0x00000000000fffff\] reserved$/);
  expect(e820Lines[2]).toBe(`BIOS-e820: [mem 0x0000000000100000-${hex((MEMORY_MIB << 20) - 1, 16)}] usable`);

  // The initrd: where baton-hv put it (page-aligned, at the top of RAM), its size page-rounded.
  const ramdisk = lines.map((l) => /^RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]$/.exec(l)).find(Boolean);
  expect(ramdisk).toBeTruthy();
  const [rdStart, rdEnd] = [Number(ramdisk![1]), Number(ramdisk![2])];
  const initrdBytes = fs.statSync(image.initramfsUncompressed).size;
  expect(rdStart % PAGE).toBe(0);
  expect(rdEnd + 1 - rdStart).toBe(Math.ceil(initrdBytes / PAGE) * PAGE);
  expect(rdEnd).toBe((MEMORY_MIB << 20) - 1);

  // The MP table (acpi=off makes the kernel use it), with its IOAPIC and one processor.
  expect(lines).toContain(`found SMP MP-table at [mem ${hex(MPTABLE_ADDR, 8)}-${hex(MPTABLE_ADDR + 15, 8)}]`);
  has(/^Intel MultiProcessor Specification v1\.4$/);
  has(/^MPTABLE: OEM ID: BATON/);
  has(/^Processor #0 \(Bootup-CPU\)$/);
  has(/^IOAPIC\[0\]: apic_id \d+, version \d+, address 0xfec00000, GSI 0-23$/);
  expect(lines).toContain('Processors: 1');
  has(/^smpboot: Allowing 1 CPUs, 0 hotplug CPUs$/);

  // The FPU as the CPU model presents it (XSAVE hidden, noxsave): FXSAVE.
  expect(lines).toContain('x86/fpu: x87 FPU will use FXSAVE');

  // Next: int3_selftest's int3. Either it stops the VM (internal-error, RIP + bytes), or
  // baton-hv completes it and the kernel frees its SMP alternatives right after.
  const deadline = Date.now() + AFTER_FPU_TIMEOUT_MS;
  let outcome: 'internal-error' | 'progress' | undefined;
  while (!outcome && Date.now() < deadline) {
    if ((await queryStatus(qmp)) === 'internal-error') outcome = 'internal-error';
    else if (proc.serial().includes('Freeing SMP alternatives memory')) outcome = 'progress';
    else await sleep(500);
  }
  if (outcome === 'internal-error') {
    const report = await qmp.execute<{ reason: string; rip: string; instructionBytes: string }>('x-query-internal-error');
    expect(report).toMatchObject({ vcpu: 0, reason: expect.stringMatching(/^emulation failure/), suberror: 1 });
    expect(report.rip).toMatch(/^0xffffffff[0-9a-f]{8}$/); // kernel text (nokaslr)
    expect(report.instructionBytes).toMatch(/^cc( [0-9a-f]{2}){15}$/); // int3
    expect(proc.stderr).toMatch(new RegExp(`emulation failure.* at RIP ${report.rip} bytes`));
    console.log(`Debian PVH: x86/fpu after ${fpuSeconds.toFixed(1)} s, then internal-error at ${report.rip} [${report.instructionBytes}]`);
  } else {
    expect(outcome).toBe('progress');
    expect(['running', 'internal-error']).toContain(await queryStatus(qmp));
    console.log(`Debian PVH: x86/fpu after ${fpuSeconds.toFixed(1)} s; int3_selftest passed (completed by baton-hv), ` +
      `"Freeing SMP alternatives memory" after ${(proc.elapsedMs() / 1000).toFixed(1)} s`);
  }
  expect(proc.exitStatus).toBeUndefined();
  await qmp.execute('quit');
  expect(await proc.waitExit()).toEqual({ code: 0, signal: null });
}, FPU_TIMEOUT_MS + AFTER_FPU_TIMEOUT_MS + 30_000);

test('Debian 6.1 bzImage (64-bit boot protocol): the decompressor reaches the serial port', async () => {
  const { image, reason } = imageOrReason();
  if (!image) {
    console.warn(`skipped: ${reason}`);
    return;
  }
  const cmdline = kernelCmdline(image);
  expect(cmdline).toMatch(/(^| )nokaslr( |$)/);
  expect(cmdline).toMatch(/(^| )earlyprintk=serial,ttyS0( |$)/);
  const proc = hv.start('debian-bz', {
    kernel: image.bzImage, memoryMiB: MEMORY_MIB, append: cmdline, extraArgs: ['--initrd', image.initramfsUncompressed],
  });
  const qmp = await hv.qmp(proc);
  // The decompressor's console writes "\r\n" line ends.
  await proc.waitForSerial((s) => /KASLR disabled: 'nokaslr' on cmdline\.\r?\n/.test(s), "the decompressor's KASLR notice", DECOMPRESSOR_TIMEOUT_MS, 200);
  console.log(`Debian bzImage: decompressor's first line after ${(proc.elapsedMs() / 1000).toFixed(1)} s`);
  expect(await queryStatus(qmp)).toBe('running');
  await qmp.execute('quit');
  expect(await proc.waitExit()).toEqual({ code: 0, signal: null });
}, DECOMPRESSOR_TIMEOUT_MS + 30_000);

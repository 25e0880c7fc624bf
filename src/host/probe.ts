/**
 * Host capability probe, in the spirit of libvirt's `virt-host-validate`: what this
 * host's KVM can actually do, measured with tiny guests (src/host/tiny-guest.ts, each a
 * fresh VM) rather than read from CPUID or capability bits alone — on kvm-pvm the bits say
 * "yes" where the instruction emulator says "no" (shared/HOST-FACTS.md).
 *
 * It reports ring-0 vs ring-3 loop speed, whether ring-0 `int3`, `xrstor` and
 * `lock cmpxchg16b` run or end in an emulation failure, whether SYSCALL from ring 3 reaches
 * ring 0, whether the guest's CPUID follows KVM_SET_CPUID2, KVM capabilities, the vhost-net
 * and TUN devices, and a verdict for Linux guests and for Baton's ring-3 test guest.
 *
 * The report is cached per boot (keyed by /proc/sys/kernel/random/boot_id) so tests can
 * ask cheaply: `requireCapability(name)` returns why a test must be skipped, or undefined.
 *
 *     const skip = requireCapability('vhostNet');
 *     if (skip) { console.warn(`skipped: ${skip}`); return; }
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../native';
import type { CpuidEntry } from '../native/kvm';
import {
  KVM_CAP_IOEVENTFD, KVM_CAP_IRQCHIP, KVM_CAP_IRQFD, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_CAP_NESTED_STATE,
  KVM_API_VERSION, KVM_CAP_PIT2, KVM_CAP_TSC_CONTROL, KVM_CAP_XSAVE, KVM_INTERNAL_ERROR_EMULATION,
} from '../native/kvm';
import { loggerFor } from '../util/logger';
import {
  CR4_OSXSAVE, EFER_SCE, TINY_LAYOUT, TINY_PORT, TINY_SELECTOR, TinyExit, TinyGuest, TinyGuestOptions, asm, tscTimedCountLoop,
} from './tiny-guest';

const log = loggerFor('host-probe');

export const HOST_PROBE_SCHEMA_VERSION = 1;
export const DEFAULT_KVM_DEVICE = '/dev/kvm';
const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';
const VHOST_NET_DEVICE = '/dev/vhost-net';
const TUN_DEVICE = '/dev/net/tun';

/** How long each speed loop runs, and how long any other probe guest may take. */
const SPEED_WINDOW_MS = 200;
/** Loop iterations between two TSC reads: ~4 ms at emulated ring 0, ~0.3 ms natively. */
const RING0_ITERATIONS_PER_CHUNK = 4096;
const RING3_ITERATIONS_PER_CHUNK = 1 << 20;
const GUEST_TIMEOUT_MS = 2000;
/** Ring 3 faster than ring 0 by more than this: ring 0 is emulated, not run natively. */
const EMULATED_RING0_RATIO = 10;

/** Marker bytes the probe guests write to TINY_PORT.mark. */
const MARK = { passed: 0xaa, user: 0x33, syscallEntry: 0x55 } as const;

const CPUID_LEAF1_ECX = { cx16: 1 << 13, xsave: 1 << 26 } as const;
/** XCR0 with x87 and SSE state enabled (bit 0 is always set). */
const XCR0_X87_SSE = 0x3n;
const MSR_STAR = 0xc000_0081;
const MSR_LSTAR = 0xc000_0082;
const MSR_FMASK = 0xc000_0084;
/** SYSCALL clears IF, TF, DF, AC and the like, as Linux asks. */
const SYSCALL_RFLAGS_MASK = 0x47700n;

export type InstructionOutcome = 'runs' | 'emulation-failure' | 'exception' | 'unavailable' | 'not-run' | 'error';

export interface InstructionCheck {
  outcome: InstructionOutcome;
  detail: string;
}

/** Yes / no / could not tell (null, with the reason in `detail`). */
export interface FactCheck {
  value: boolean | null;
  detail: string;
}

export type LinuxGuestVerdict = 'native' | 'with-instruction-completion' | 'with-instruction-completion-to-init' | 'no';

export const KVM_CAPABILITIES = {
  irqchip: KVM_CAP_IRQCHIP,
  ioeventfd: KVM_CAP_IOEVENTFD,
  irqfd: KVM_CAP_IRQFD,
  pit2: KVM_CAP_PIT2,
  manualDirtyLogProtect2: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  xsave: KVM_CAP_XSAVE,
  nestedState: KVM_CAP_NESTED_STATE,
  tscControl: KVM_CAP_TSC_CONTROL,
} as const;
export type KvmCapabilityName = keyof typeof KVM_CAPABILITIES;

/** The probe's result. Its JSON shape is stable: every field is always present. */
export interface HostProbeReport {
  schemaVersion: typeof HOST_PROBE_SCHEMA_VERSION;
  probedAt: string;
  bootId: string | null;
  durationMs: number;
  kvm: { device: string; present: boolean; apiVersion: number | null; detail: string };
  speed: {
    ring0IterationsPerSecond: number | null;
    ring3IterationsPerSecond: number | null;
    /** ring3 / ring0: ~1000 where ring 0 is emulated (kvm-pvm), ~1 with hardware virtualization. */
    ring3ToRing0Ratio: number | null;
    detail: string;
  };
  ring0Instructions: { int3: InstructionCheck; xrstor: InstructionCheck; cmpxchg16b: InstructionCheck };
  /** A ring-3 guest entered with `iretq`, doing port I/O through the TSS bitmap and counting. */
  ring3Guest: FactCheck;
  syscallFromRing3ReachesRing0: FactCheck;
  cpuidHonoursSetCpuid2: FactCheck;
  /** KVM_CHECK_EXTENSION answers (null when KVM is absent). */
  capabilities: Record<KvmCapabilityName, boolean | null>;
  /** A guest write shows up in KVM_GET_DIRTY_LOG. */
  dirtyLog: FactCheck;
  devices: { vhostNet: DeviceCheck; tun: DeviceCheck };
  verdict: {
    linuxGuests: LinuxGuestVerdict;
    linuxGuestsReason: string;
    ring3Guests: boolean;
    ring3GuestsReason: string;
  };
}

export interface DeviceCheck {
  path: string;
  present: boolean;
  detail: string;
}

export interface ProbeOptions {
  /** Probe again even when this boot's report is cached (and refresh the cache). */
  fresh?: boolean;
  /** KVM device to probe (default /dev/kvm); reports for other devices are not cached. */
  kvmDevice?: string;
}

/** Probes the host, or returns this boot's cached report. */
export async function probeHost(options: ProbeOptions = {}): Promise<HostProbeReport> {
  const device = options.kvmDevice ?? DEFAULT_KVM_DEVICE;
  const cacheable = device === DEFAULT_KVM_DEVICE;
  if (cacheable && !options.fresh) {
    const cached = readCachedReport();
    if (cached) return cached;
  }
  const report = await runProbe(device);
  if (cacheable) writeCachedReport(report);
  return report;
}

async function runProbe(device: string): Promise<HostProbeReport> {
  const started = process.hrtime.bigint();
  const bootId = readBootId();
  const devices = { vhostNet: checkDevice(VHOST_NET_DEVICE), tun: checkDevice(TUN_DEVICE) };
  const kvm = openKvm(device);
  const notRun = (why: string): InstructionCheck => ({ outcome: 'not-run', detail: why });
  const unknown = (why: string): FactCheck => ({ value: null, detail: why });
  let report: Omit<HostProbeReport, 'verdict' | 'durationMs'>;
  if (kvm.fd === undefined) {
    const why = `KVM is absent: ${kvm.detail}`;
    report = {
      schemaVersion: HOST_PROBE_SCHEMA_VERSION, probedAt: new Date().toISOString(), bootId,
      kvm: { device, present: false, apiVersion: null, detail: kvm.detail },
      speed: { ring0IterationsPerSecond: null, ring3IterationsPerSecond: null, ring3ToRing0Ratio: null, detail: why },
      ring0Instructions: { int3: notRun(why), xrstor: notRun(why), cmpxchg16b: notRun(why) },
      ring3Guest: unknown(why), syscallFromRing3ReachesRing0: unknown(why), cpuidHonoursSetCpuid2: unknown(why),
      capabilities: mapCapabilities(() => null), dirtyLog: unknown(why), devices,
    };
  } else {
    const kvmFd = kvm.fd;
    try {
      const supportedCpuid = native.kvmGetSupportedCpuid(kvmFd);
      const capabilities = mapCapabilities((cap) => native.kvmCheckExtension(kvmFd, cap) > 0);
      const ring0 = await measureRing0Speed(device);
      const ring3 = await probeRing3Guest(device);
      const ring0Rate = ring0.iterationsPerSecond;
      const ring3Rate = ring3.speed.iterationsPerSecond;
      const ratio = ring0Rate && ring3Rate ? Math.round((ring3Rate / ring0Rate) * 100) / 100 : null;
      report = {
        schemaVersion: HOST_PROBE_SCHEMA_VERSION, probedAt: new Date().toISOString(), bootId,
        kvm: { device, present: true, apiVersion: kvm.apiVersion ?? null, detail: kvm.detail },
        speed: {
          ring0IterationsPerSecond: ring0Rate,
          ring3IterationsPerSecond: ring3Rate,
          ring3ToRing0Ratio: ratio,
          detail: [ring0.detail, ring3.speed.detail].join('; '),
        },
        ring0Instructions: {
          int3: await probeInt3(device),
          xrstor: await probeXrstor(device, supportedCpuid),
          cmpxchg16b: await probeCmpxchg16b(device, supportedCpuid),
        },
        ring3Guest: ring3.works,
        syscallFromRing3ReachesRing0: await probeSyscall(device),
        cpuidHonoursSetCpuid2: await probeCpuidHonoured(device, supportedCpuid),
        capabilities,
        dirtyLog: ring3.dirtyLog,
        devices,
      };
    } finally {
      fs.closeSync(kvmFd);
    }
  }
  const durationMs = Math.round(Number(process.hrtime.bigint() - started) / 1e6);
  const full = { ...report, durationMs, verdict: deriveVerdict(report) };
  log.debug('host probe done', { durationMs, verdict: full.verdict });
  return full;
}

/** Opens `device` and checks that it speaks the KVM API Baton was written for. */
function openKvm(device: string): { fd?: number; apiVersion?: number; detail: string } {
  if (!fs.existsSync(device)) return { detail: `${device} does not exist (no KVM in this kernel, or the kvm module is not loaded)` };
  let fd: number;
  try {
    fd = native.kvmOpen(device);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { detail: `cannot open ${device} (${e.code ?? e.message}): check its permissions (the kvm group)` };
  }
  try {
    const apiVersion = native.kvmGetApiVersion(fd);
    if (apiVersion !== KVM_API_VERSION) {
      fs.closeSync(fd);
      return { detail: `${device} speaks KVM API version ${apiVersion}, Baton needs ${KVM_API_VERSION}` };
    }
    return { fd, apiVersion, detail: `${device} opened, KVM API version ${apiVersion}` };
  } catch (err) {
    fs.closeSync(fd);
    return { detail: `${device} is not a KVM device (KVM_GET_API_VERSION: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
}

function mapCapabilities(answer: (cap: number) => boolean | null): Record<KvmCapabilityName, boolean | null> {
  return Object.fromEntries(Object.entries(KVM_CAPABILITIES).map(([name, cap]) => [name, answer(cap)])) as Record<KvmCapabilityName, boolean | null>;
}

function checkDevice(devicePath: string): DeviceCheck {
  try {
    const stat = fs.statSync(devicePath);
    if (!stat.isCharacterDevice()) return { path: devicePath, present: false, detail: `${devicePath} exists but is not a character device` };
    fs.accessSync(devicePath, fs.constants.R_OK | fs.constants.W_OK);
    return { path: devicePath, present: true, detail: `${devicePath} is present` };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const detail = code === 'ENOENT' ? `${devicePath} is absent` : `${devicePath} is not usable (${code})`;
    return { path: devicePath, present: false, detail };
  }
}

/**
 * Builds a probe guest, hands it to `use`, always closes it. Failures go to `onError`, with
 * `building` true when KVM refused the VM's set-up (before the guest ran).
 */
async function withGuest<T>(options: TinyGuestOptions, use: (guest: TinyGuest) => Promise<T>, onError: (message: string, building: boolean) => T): Promise<T> {
  let guest: TinyGuest;
  try {
    guest = new TinyGuest(options);
  } catch (err) {
    return onError(`could not build the probe VM: ${(err as Error).message}`, true);
  }
  try {
    return await use(guest);
  } catch (err) {
    return onError((err as Error).message, false);
  } finally {
    guest.close();
  }
}

function describeExit(exit: TinyExit): string {
  switch (exit.kind) {
    case 'out': return `out 0x${exit.port.toString(16)} = 0x${exit.value.toString(16)} at CPL ${exit.cpl}`;
    case 'exception': return `exception ${exit.vector} at RIP 0x${exit.faultRip.toString(16)}, CS 0x${exit.faultCs.toString(16)}`
      + (exit.errorCode !== undefined ? `, error code 0x${exit.errorCode.toString(16)}` : '');
    case 'internal-error': return `KVM_EXIT_INTERNAL_ERROR suberror ${exit.suberror} at RIP 0x${exit.rip.toString(16)}`;
    case 'hlt': return `hlt at RIP 0x${exit.rip.toString(16)}`;
    case 'shutdown': return 'shutdown (triple fault)';
    case 'kicked': return 'kicked';
    case 'timeout': return `no exit within ${GUEST_TIMEOUT_MS} ms`;
    case 'other': return `exit reason ${exit.reason}`;
  }
}

interface LoopSpeed {
  iterationsPerSecond: number | null;
  detail: string;
}

/**
 * Lets a `tscTimedCountLoop` at `loopAddress` run for SPEED_WINDOW_MS, stops it and
 * computes its speed from the guest's TSC (wall-clock time as a fallback).
 */
async function timeCountingLoop(guest: TinyGuest, ring: 0 | 3, loopAddress: number, iterationsPerChunk: number, incrementOffset: number): Promise<LoopSpeed> {
  const { seconds: wallSeconds, exit } = await guest.runFor(SPEED_WINDOW_MS);
  if (exit.kind !== 'kicked') return { iterationsPerSecond: null, detail: `ring-${ring} loop stopped early: ${describeExit(exit)}` };
  const { iterations, tscTicks } = guest.timedCount(loopAddress, iterationsPerChunk, incrementOffset);
  if (iterations === 0) return { iterationsPerSecond: null, detail: `ring ${ring}: not one chunk of ${iterationsPerChunk} iterations in ${SPEED_WINDOW_MS} ms` };
  let tscKhz = 0;
  try {
    tscKhz = guest.tscKhz();
  } catch (err) {
    log.debug(`KVM_GET_TSC_KHZ failed (${(err as Error).message}); timing the loop by the wall clock`);
  }
  const byTsc = tscKhz > 0 && tscTicks > 0n;
  const seconds = byTsc ? Number(tscTicks) / (tscKhz * 1000) : wallSeconds;
  return {
    iterationsPerSecond: Math.round(iterations / seconds),
    detail: `ring ${ring}: ${iterations} iterations in ${(seconds * 1000).toFixed(1)} ms (${byTsc ? 'guest TSC' : 'wall clock'})`,
  };
}

/** Speed of the counting loop at CPL 0 in long mode. */
async function measureRing0Speed(device: string): Promise<LoopSpeed> {
  const loop = tscTimedCountLoop(RING0_ITERATIONS_PER_CHUNK);
  return withGuest(
    { kvmDevice: device, kernelCode: loop.code },
    (guest) => timeCountingLoop(guest, 0, TINY_LAYOUT.kernelCode, RING0_ITERATIONS_PER_CHUNK, loop.incrementOffset),
    (message) => ({ iterationsPerSecond: null, detail: `ring-0 loop failed: ${message}` }),
  );
}

interface Ring3Result {
  works: FactCheck;
  speed: LoopSpeed;
  dirtyLog: FactCheck;
}

/**
 * The way Baton's test guest runs: ring 0 `iretq`s to ring 3, which writes a byte to
 * memory, does port I/O through the TSS bitmap, then counts. Also checks dirty logging:
 * the ring-3 write must appear in KVM_GET_DIRTY_LOG.
 */
async function probeRing3Guest(device: string): Promise<Ring3Result> {
  const written = TINY_LAYOUT.data;
  const announce = [...asm.movAlImm8(MARK.user), ...asm.movAbs32Al(written), ...asm.outImm8Al(TINY_PORT.mark)];
  const loop = tscTimedCountLoop(RING3_ITERATIONS_PER_CHUNK);
  const failed = (why: string, dirtyLog: FactCheck = { value: null, detail: why }): Ring3Result =>
    ({ works: { value: false, detail: why }, speed: { iterationsPerSecond: null, detail: `ring 3: ${why}` }, dirtyLog });
  return withGuest<Ring3Result>(
    { kvmDevice: device, dirtyLog: true, kernelCode: asm.enterUserCode(), userCode: [...announce, ...loop.code] },
    async (guest) => {
      // Start from an empty log, so the bit seen below is the guest's own write.
      guest.pageDirty(written);
      const first = await guest.run(GUEST_TIMEOUT_MS);
      if (first.kind !== 'out' || first.value !== MARK.user || first.cpl !== 3) return failed(`expected a port write from CPL 3, got ${describeExit(first)}`);
      const dirtyLog: FactCheck = guest.pageDirty(written)
        ? { value: true, detail: 'a guest write appeared in KVM_GET_DIRTY_LOG' }
        : { value: false, detail: `the guest wrote 0x${written.toString(16)} but its page is not in KVM_GET_DIRTY_LOG` };
      const speed = await timeCountingLoop(guest, 3, TINY_LAYOUT.userCode + announce.length, RING3_ITERATIONS_PER_CHUNK, loop.incrementOffset);
      if (speed.iterationsPerSecond === null) return failed(speed.detail, dirtyLog);
      return { works: { value: true, detail: 'entered ring 3 with iretq, port I/O through the TSS I/O bitmap, counted natively' }, speed, dirtyLog };
    },
    (message) => failed(message),
  );
}

/**
 * Runs ring-0 `code` (which ends with `markAndHalt(MARK.passed)`) and classifies what
 * happened. `trapVector` is an exception the instruction raises on purpose (int3's #BP):
 * seeing it delivered and returning is part of running.
 */
async function probeRing0Instruction(
  device: string,
  code: number[],
  options: Partial<TinyGuestOptions> = {},
  trapVector?: number,
  onBuildError?: (message: string) => InstructionCheck,
): Promise<InstructionCheck> {
  return withGuest<InstructionCheck>(
    { kvmDevice: device, ...options, kernelCode: [...code, ...asm.markAndHalt(MARK.passed)] },
    async (guest) => {
      let trapped = false;
      for (;;) {
        const exit = await guest.run(GUEST_TIMEOUT_MS);
        if (exit.kind === 'out' && exit.value === MARK.passed) {
          return { outcome: 'runs', detail: trapped ? `runs (exception ${trapVector} delivered, handler returned)` : 'runs' };
        }
        if (exit.kind === 'exception' && exit.vector === trapVector && !trapped) {
          trapped = true;
          continue;
        }
        if (exit.kind === 'internal-error') {
          const emulation = exit.suberror === KVM_INTERNAL_ERROR_EMULATION;
          return { outcome: emulation ? 'emulation-failure' : 'error', detail: describeExit(exit) + (emulation ? ' (emulation failure)' : '') };
        }
        if (exit.kind === 'exception') return { outcome: 'exception', detail: describeExit(exit) };
        return { outcome: 'error', detail: `unexpected ${describeExit(exit)}` };
      }
    },
    (message, building) => (building && onBuildError ? onBuildError(message) : { outcome: 'error', detail: message }),
  );
}

function leaf1Ecx(cpuid: readonly CpuidEntry[]): number {
  return cpuid.find((e) => e.function === 1 && e.index === 0)?.ecx ?? 0;
}

function probeInt3(device: string): Promise<InstructionCheck> {
  const VECTOR_BREAKPOINT = 3;
  return probeRing0Instruction(device, asm.int3, {}, VECTOR_BREAKPOINT);
}

/**
 * The guest gets XSAVE in its CPUID, CR4.OSXSAVE and XCR0 = x87|SSE; a KVM that refuses
 * that set-up has no XSAVE for guests. (kvm-pvm's supported CPUID lacks XSAVE, yet it
 * accepts the set-up, and its guests see XSAVE in the host's CPUID anyway.)
 */
async function probeXrstor(device: string, supported: readonly CpuidEntry[]): Promise<InstructionCheck> {
  const cpuid = supported.map((e) => (e.function === 1 && e.index === 0 ? { ...e, ecx: (e.ecx | CPUID_LEAF1_ECX.xsave) >>> 0 } : e));
  // An all-zero XSAVE area is valid (XSTATE_BV = 0: restore the init state); RFBM = XCR0.
  return probeRing0Instruction(
    device,
    [...asm.xorEdxEdx, ...asm.movEaxImm32(Number(XCR0_X87_SSE)), ...asm.xrstorAbs32(TINY_LAYOUT.data)],
    { cpuid, extraCr4: CR4_OSXSAVE, xcr0: XCR0_X87_SSE },
    undefined,
    (message) => ({ outcome: 'unavailable', detail: `KVM refused the XSAVE set-up (CPUID XSAVE, CR4.OSXSAVE, XCR0 = x87|SSE): ${message}` }),
  );
}

async function probeCmpxchg16b(device: string, supported: readonly CpuidEntry[]): Promise<InstructionCheck> {
  if ((leaf1Ecx(supported) & CPUID_LEAF1_ECX.cx16) === 0) {
    return { outcome: 'unavailable', detail: 'CX16 is not in KVM_GET_SUPPORTED_CPUID: guests cannot use cmpxchg16b here' };
  }
  // RDX:RAX = RCX:RBX = 0 and the target is zero: the compare succeeds and the store happens.
  return probeRing0Instruction(device, [...asm.xorEaxEax, ...asm.xorEdxEdx, ...asm.lockCmpxchg16bAbs32(TINY_LAYOUT.data + 0x100)]);
}

/** SYSCALL from ring 3 must land at LSTAR at CPL 0; on kvm-pvm it lands there at CPL 3. */
async function probeSyscall(device: string): Promise<FactCheck> {
  const enterUser = asm.enterUserCode();
  const syscallEntry = TINY_LAYOUT.kernelCode + enterUser.length; // right after the iretq
  const star = (BigInt(TINY_SELECTOR.kernelData) << 48n) | (BigInt(TINY_SELECTOR.kernelCode) << 32n);
  return withGuest<FactCheck>(
    {
      kvmDevice: device,
      extraEfer: EFER_SCE,
      msrs: [[MSR_STAR, star], [MSR_LSTAR, BigInt(syscallEntry)], [MSR_FMASK, SYSCALL_RFLAGS_MASK]],
      kernelCode: [...enterUser, ...asm.markAndHalt(MARK.syscallEntry)],
      userCode: [...asm.syscall, ...asm.hlt],
    },
    async (guest) => {
      const exit = await guest.run(GUEST_TIMEOUT_MS);
      if (exit.kind === 'out' && exit.value === MARK.syscallEntry) {
        if (exit.cpl === 0) return { value: true, detail: 'SYSCALL entered LSTAR at CPL 0' };
        return { value: false, detail: `RIP became LSTAR but CS stayed at CPL ${exit.cpl}: the kernel's entry runs in ring 3` };
      }
      if (exit.kind === 'exception' && BigInt(exit.faultRip) === BigInt(syscallEntry) && (exit.faultCs & 3) === 3) {
        return { value: false, detail: `RIP became LSTAR but CS stayed at CPL 3: ${describeExit(exit)}` };
      }
      return { value: false, detail: `SYSCALL did not reach LSTAR: ${describeExit(exit)}` };
    },
    (message) => ({ value: null, detail: message }),
  );
}

/** CPUID.1:ECX feature names, for saying which bits a guest saw that it was not given. */
const LEAF1_ECX_NAMES: Record<number, string> = {
  0: 'sse3', 1: 'pclmulqdq', 9: 'ssse3', 12: 'fma', 13: 'cx16', 19: 'sse4_1', 20: 'sse4_2', 21: 'x2apic', 22: 'movbe',
  23: 'popcnt', 24: 'tsc_deadline', 25: 'aes', 26: 'xsave', 28: 'avx', 29: 'f16c', 30: 'rdrand', 31: 'hypervisor',
};
/** OSXSAVE mirrors CR4.OSXSAVE: the CPU sets it, not KVM_SET_CPUID2. */
const LEAF1_ECX_OSXSAVE = 1 << 27;

function leaf1EcxNames(bits: number): string {
  const names: string[] = [];
  for (let b = 0; b < 32; b++) if ((bits >>> b) & 1) names.push(LEAF1_ECX_NAMES[b] ?? `bit ${b}`);
  return names.join(', ');
}

/**
 * Gives the guest KVM's supported CPUID minus CX16 (when present) and reads leaf 1 from
 * ring 0: honoured means the guest sees exactly the ECX it was given. On kvm-pvm it sees
 * the host's features, including ones KVM never offered.
 */
async function probeCpuidHonoured(device: string, supported: readonly CpuidEntry[]): Promise<FactCheck> {
  const given = (leaf1Ecx(supported) & ~CPUID_LEAF1_ECX.cx16) >>> 0;
  const cpuid = supported.map((e) => (e.function === 1 && e.index === 0 ? { ...e, ecx: given } : e));
  return withGuest<FactCheck>(
    {
      kvmDevice: device,
      cpuid,
      kernelCode: [...asm.movEaxImm32(1), ...asm.xorEcxEcx, ...asm.cpuid, ...asm.markAndHalt(MARK.passed)],
    },
    async (guest) => {
      const exit = await guest.run(GUEST_TIMEOUT_MS);
      if (exit.kind !== 'out' || exit.value !== MARK.passed) return { value: null, detail: `cpuid did not complete: ${describeExit(exit)}` };
      const seen = (Number(guest.reg('rcx') & 0xffffffffn) & ~LEAF1_ECX_OSXSAVE) >>> 0;
      const extra = (seen & ~given) >>> 0;
      const missing = (given & ~seen & ~LEAF1_ECX_OSXSAVE) >>> 0;
      if (extra === 0 && missing === 0) return { value: true, detail: 'the guest saw exactly the CPUID.1:ECX it was given' };
      const parts = [
        extra ? `features it was not given: ${leaf1EcxNames(extra)}` : '',
        missing ? `not the features it was given: ${leaf1EcxNames(missing)}` : '',
      ].filter(Boolean);
      return { value: false, detail: `the guest's CPUID.1:ECX (0x${seen.toString(16)}) shows ${parts.join('; ')}` };
    },
    (message) => ({ value: null, detail: message }),
  );
}

/** "ring-0 int3, xrstor and lock cmpxchg16b end in emulation failures" (empty when all run). */
function failingInstructions(checks: HostProbeReport['ring0Instructions']): string {
  const mnemonic: Record<keyof typeof checks, string> = { int3: 'int3', xrstor: 'xrstor', cmpxchg16b: 'lock cmpxchg16b' };
  const names = (outcome: InstructionOutcome) => (Object.keys(checks) as (keyof typeof checks)[]).filter((k) => checks[k].outcome === outcome).map((k) => mnemonic[k]);
  const list = (items: string[]) => (items.length > 1 ? `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}` : items[0]);
  const parts: string[] = [];
  const emulation = names('emulation-failure');
  if (emulation.length) parts.push(`ring-0 ${list(emulation)} ${emulation.length === 1 ? 'ends in an emulation failure' : 'end in emulation failures'}`);
  for (const outcome of ['exception', 'error', 'not-run'] as const) {
    const other = names(outcome);
    if (other.length) parts.push(`ring-0 ${list(other)}: ${outcome}`);
  }
  return parts.join('; ');
}

function deriveVerdict(report: Omit<HostProbeReport, 'verdict' | 'durationMs'>): HostProbeReport['verdict'] {
  if (!report.kvm.present) {
    const why = `KVM is absent: ${report.kvm.detail}`;
    return { linuxGuests: 'no', linuxGuestsReason: why, ring3Guests: false, ring3GuestsReason: why };
  }
  const ring3Guests = report.ring3Guest.value === true;
  const ring3GuestsReason = ring3Guests ? 'a ring-3 guest entered with iretq runs, does port I/O and counts' : `the ring-3 guest failed: ${report.ring3Guest.detail}`;
  const verdict = (linuxGuests: LinuxGuestVerdict, linuxGuestsReason: string) => ({ linuxGuests, linuxGuestsReason, ring3Guests, ring3GuestsReason });
  if (report.speed.ring0IterationsPerSecond === null) return verdict('no', `a ring-0 long-mode guest does not run: ${report.speed.detail}`);

  const failing = failingInstructions(report.ring0Instructions);
  const ratio = report.speed.ring3ToRing0Ratio;
  const slow = ratio !== null && ratio > EMULATED_RING0_RATIO ? `; ring 0 runs ~${Math.round(ratio)}x slower than ring 3 (emulated), so a boot takes minutes` : '';
  const syscall = report.syscallFromRing3ReachesRing0;
  if (syscall.value !== true) {
    const kernel = failing !== ''
      ? `the kernel boots only with Baton's instruction completion and CPU-feature workarounds (${failing})`
      : 'the kernel boots';
    return verdict('with-instruction-completion-to-init', `${kernel} but its userspace cannot run: SYSCALL from ring 3 does not reach ring 0 (${syscall.detail})${slow}`);
  }
  if (failing !== '') {
    return verdict('with-instruction-completion', `Linux runs with Baton's instruction completion and CPU-feature workarounds (${failing})${slow}`);
  }
  return verdict('native', `ring-0 instructions and SYSCALL work${slow}`);
}

// ---- per-boot cache ----

function readBootId(): string | null {
  try {
    return fs.readFileSync(BOOT_ID_PATH, 'utf8').trim() || null;
  } catch {
    return null;
  }
}

/** The cache file for this boot and user, or undefined when the boot id is unknown. */
export function hostProbeCachePath(): string | undefined {
  const bootId = readBootId();
  if (!bootId) return undefined;
  return path.join(os.tmpdir(), `baton-host-probe.${process.getuid?.() ?? 'any'}.${bootId}.json`);
}

function readCachedReport(): HostProbeReport | undefined {
  const file = hostProbeCachePath();
  if (!file) return undefined;
  try {
    // A world-writable /tmp: trust only a file this user wrote.
    const stat = fs.statSync(file);
    if (process.getuid && stat.uid !== process.getuid()) return undefined;
    const report = JSON.parse(fs.readFileSync(file, 'utf8')) as HostProbeReport;
    if (report.schemaVersion !== HOST_PROBE_SCHEMA_VERSION || report.bootId !== readBootId() || report.kvm?.device !== DEFAULT_KVM_DEVICE) return undefined;
    return report;
  } catch {
    return undefined;
  }
}

function writeCachedReport(report: HostProbeReport): void {
  const file = hostProbeCachePath();
  if (!file) return;
  const temp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(temp, JSON.stringify(report, null, 2) + '\n', { mode: 0o600 });
    fs.renameSync(temp, file);
  } catch (err) {
    log.warn(`could not cache the host probe report in ${file}: ${(err as Error).message}`);
    fs.rmSync(temp, { force: true });
  }
}

// ---- what tests ask ----

/** Capabilities a test can require; each maps to why it is missing (or undefined). */
const CAPABILITY_CHECKS = {
  kvm: (r) => (r.kvm.present ? undefined : `KVM is absent: ${r.kvm.detail}`),
  ring3Guests: (r) => (r.verdict.ring3Guests ? undefined : r.verdict.ring3GuestsReason),
  /** Ring 0 runs at native speed (not emulated ~1000x slower). */
  fastRing0: (r) => {
    const ratio = r.speed.ring3ToRing0Ratio;
    return ratio !== null && ratio <= EMULATED_RING0_RATIO ? undefined : `guest ring 0 is emulated here (${ratio === null ? 'not measured' : `~${Math.round(ratio)}x slower than ring 3`})`;
  },
  ring0Int3: (r) => instructionReason('int3', r.ring0Instructions.int3),
  ring0Xrstor: (r) => instructionReason('xrstor', r.ring0Instructions.xrstor),
  ring0Cmpxchg16b: (r) => instructionReason('lock cmpxchg16b', r.ring0Instructions.cmpxchg16b),
  syscallFromRing3: (r) => factReason('SYSCALL from ring 3 does not reach ring 0', r.syscallFromRing3ReachesRing0),
  cpuidHonoured: (r) => factReason("the guest's CPUID ignores KVM_SET_CPUID2", r.cpuidHonoursSetCpuid2),
  dirtyLog: (r) => factReason('dirty logging does not work', r.dirtyLog),
  irqchip: (r) => capabilityReason(r, 'irqchip', 'KVM_CAP_IRQCHIP'),
  ioeventfd: (r) => capabilityReason(r, 'ioeventfd', 'KVM_CAP_IOEVENTFD'),
  irqfd: (r) => capabilityReason(r, 'irqfd', 'KVM_CAP_IRQFD'),
  pit2: (r) => capabilityReason(r, 'pit2', 'KVM_CAP_PIT2'),
  manualDirtyLogProtect2: (r) => capabilityReason(r, 'manualDirtyLogProtect2', 'KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2'),
  xsave: (r) => capabilityReason(r, 'xsave', 'KVM_CAP_XSAVE'),
  nestedState: (r) => capabilityReason(r, 'nestedState', 'KVM_CAP_NESTED_STATE'),
  tscControl: (r) => capabilityReason(r, 'tscControl', 'KVM_CAP_TSC_CONTROL'),
  vhostNet: (r) => (r.devices.vhostNet.present ? undefined : `${r.devices.vhostNet.detail} (CONFIG_VHOST_NET not set, or the vhost_net module not loaded)`),
  tun: (r) => (r.devices.tun.present ? undefined : r.devices.tun.detail),
  /** The Linux kernel gets at least as far as init (possibly with instruction completion). */
  linuxKernel: (r) => (r.verdict.linuxGuests !== 'no' ? undefined : r.verdict.linuxGuestsReason),
  /** Linux userspace runs. */
  linuxUserspace: (r) => (r.verdict.linuxGuests === 'native' || r.verdict.linuxGuests === 'with-instruction-completion' ? undefined : r.verdict.linuxGuestsReason),
} satisfies Record<string, (report: HostProbeReport) => string | undefined>;

export type HostCapability = keyof typeof CAPABILITY_CHECKS;
export const HOST_CAPABILITIES = Object.keys(CAPABILITY_CHECKS) as HostCapability[];

function instructionReason(name: string, check: InstructionCheck): string | undefined {
  return check.outcome === 'runs' ? undefined : `ring-0 ${name}: ${check.outcome} — ${check.detail}`;
}

function factReason(missing: string, fact: FactCheck): string | undefined {
  if (fact.value === true) return undefined;
  return fact.value === false ? `${missing}: ${fact.detail}` : `could not tell (${fact.detail})`;
}

function capabilityReason(r: HostProbeReport, name: KvmCapabilityName, cap: string): string | undefined {
  const value = r.capabilities[name];
  if (value === true) return undefined;
  return value === false ? `KVM lacks ${cap}` : `KVM is absent: ${r.kvm.detail}`;
}

/** Why `name` is missing in `report`, or undefined when the host has it. */
export function missingCapability(report: HostProbeReport, name: HostCapability): string | undefined {
  const reason = CAPABILITY_CHECKS[name](report);
  return reason === undefined ? undefined : `host lacks ${name}: ${reason}`;
}

/** Why a test needing `name` must be skipped (undefined: go ahead). Probes in-process when not cached. */
export async function requireCapabilityAsync(name: HostCapability): Promise<string | undefined> {
  return missingCapability(await probeHost(), name);
}

/**
 * Why a test needing `name` must be skipped (undefined: go ahead). Synchronous, for jest
 * `describe` bodies: it reads this boot's cached report, and when there is none runs
 * `baton host validate --json` (the built CLI in dist/, which caches its report) and waits.
 */
export function requireCapability(name: HostCapability): string | undefined {
  let report = readCachedReport();
  if (!report) {
    const repo = path.join(__dirname, '..', '..');
    const cli = path.join(repo, 'bin', 'run.js');
    const child = spawnSync(process.execPath, [cli, 'host', 'validate', '--json'], { cwd: repo, encoding: 'utf8', timeout: 60_000 });
    report = readCachedReport();
    if (!report) {
      throw new Error(`host probe failed (\`node bin/run.js host validate --json\` exited ${child.status}; is dist/ built? npx tsc -p tsconfig.build.json): ${child.stderr || child.error?.message || ''}`.trim());
    }
  }
  return missingCapability(report, name);
}

// ---- the virt-host-validate view ----

export type ValidationStatus = 'PASS' | 'WARN' | 'FAIL';

export interface ValidationLine {
  check: string;
  status: ValidationStatus;
  /** Shown in parentheses after the status. */
  note?: string;
}

/** The report as virt-host-validate-style checks, in order. */
export function validationLines(report: HostProbeReport): ValidationLine[] {
  const lines: ValidationLine[] = [];
  const add = (check: string, status: ValidationStatus, note?: string) => lines.push({ check, status, ...(note ? { note } : {}) });
  const fact = (check: string, f: FactCheck, whenFalse: ValidationStatus, shortNo: string) =>
    add(check, f.value === true ? 'PASS' : f.value === false ? whenFalse : 'WARN', f.value === true ? undefined : f.value === false ? shortNo : `unknown: ${f.detail}`);

  add(`checking for device ${report.kvm.device}`, report.kvm.present ? 'PASS' : 'FAIL', report.kvm.present ? undefined : report.kvm.detail);
  if (report.kvm.present) {
    const { ring0IterationsPerSecond: r0, ring3IterationsPerSecond: r3, ring3ToRing0Ratio: ratio } = report.speed;
    const speed = r0 !== null && r3 !== null && ratio !== null
      ? `ring 0 ${formatRate(r0)}, ring 3 ${formatRate(r3)}: ${Math.round(ratio)}x`
      : report.speed.detail;
    add('ring-0 speed against ring 3', ratio !== null && ratio <= EMULATED_RING0_RATIO ? 'PASS' : ratio !== null ? 'WARN' : 'FAIL', ratio !== null && ratio > EMULATED_RING0_RATIO ? `emulated; ${speed}` : speed);
    fact('ring-3 guest (iretq, TSS I/O bitmap)', report.ring3Guest, 'FAIL', report.ring3Guest.detail);
    const instruction = (name: string, check: InstructionCheck) => {
      const note = check.outcome === 'emulation-failure' ? 'emulation failure' : check.outcome === 'runs' ? undefined : `${check.outcome}: ${check.detail}`;
      add(`ring-0 ${name}`, check.outcome === 'runs' ? 'PASS' : check.outcome === 'unavailable' ? 'WARN' : 'FAIL', note);
    };
    instruction('int3', report.ring0Instructions.int3);
    instruction('xrstor', report.ring0Instructions.xrstor);
    instruction('lock cmpxchg16b', report.ring0Instructions.cmpxchg16b);
    fact('SYSCALL from ring 3 reaches ring 0', report.syscallFromRing3ReachesRing0, 'FAIL', 'stays at CPL 3');
    fact('guest CPUID follows KVM_SET_CPUID2', report.cpuidHonoursSetCpuid2, 'WARN', "the guest sees the host's CPUID");
    const capability = (label: string, name: KvmCapabilityName, whenMissing: ValidationStatus) =>
      add(`for ${label}`, report.capabilities[name] ? 'PASS' : whenMissing, report.capabilities[name] ? undefined : 'not supported');
    capability('in-kernel irqchip', 'irqchip', 'FAIL');
    capability('in-kernel PIT', 'pit2', 'FAIL');
    capability('ioeventfd', 'ioeventfd', 'FAIL');
    capability('irqfd', 'irqfd', 'FAIL');
    fact('dirty page logging', report.dirtyLog, 'FAIL', report.dirtyLog.detail);
    capability('manual dirty-log protection', 'manualDirtyLogProtect2', 'WARN');
    capability('XSAVE state save/restore', 'xsave', 'WARN');
    capability('nested state', 'nestedState', 'WARN');
    capability('TSC frequency control', 'tscControl', 'WARN');
  }
  add(`checking for device ${report.devices.tun.path}`, report.devices.tun.present ? 'PASS' : 'FAIL', report.devices.tun.present ? undefined : report.devices.tun.detail);
  add(`checking for device ${report.devices.vhostNet.path}`, report.devices.vhostNet.present ? 'PASS' : 'WARN', report.devices.vhostNet.present ? undefined : 'absent: virtio-net uses the userspace TAP path');
  const linux = report.verdict.linuxGuests;
  add('Linux guests', linux === 'native' ? 'PASS' : linux === 'no' ? 'FAIL' : 'WARN', `${linux}: ${report.verdict.linuxGuestsReason}`);
  add("Baton's ring-3 test guest", report.verdict.ring3Guests ? 'PASS' : 'FAIL', report.verdict.ring3Guests ? undefined : report.verdict.ring3GuestsReason);
  return lines;
}

function formatRate(perSecond: number): string {
  return perSecond >= 1e6 ? `${(perSecond / 1e6).toFixed(1)} M it/s` : `${(perSecond / 1e3).toFixed(1)} k it/s`;
}

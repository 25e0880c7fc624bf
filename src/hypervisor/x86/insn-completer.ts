/**
 * Instruction completion: when the host's instruction emulator rejects a guest ring-0
 * instruction (KVM_EXIT_INTERNAL_ERROR, emulation failure — on kvm-pvm, where guest ring
 * 0 is emulated, that includes `int3`, `clac`, `popcnt`, `ldmxcsr`...), decode it at
 * CS:RIP and, for the documented set below, do what the CPU would have done: update
 * registers/memory and advance RIP, or inject the exception the instruction raises.
 * Anything else is declined, and the VM stops in internal-error with RIP and bytes.
 *
 * The completion set (semantics per the Intel SDM, checked in the order the CPU does):
 *  - int3            trap: RIP += length, inject #BP (the handler sees the next RIP).
 *  - clac / stac     CPL > 0: #UD; else clear / set RFLAGS.AC.
 *  - popcnt r, r/m   dest = bit count of src; ZF = (src == 0); OF SF AF CF PF cleared.
 *  - fwait           CR0.MP and CR0.TS: #NM; pending x87 exception: declined; else no-op.
 *  - ldmxcsr m32     CR0.EM or !CR4.OSFXSR: #UD; CR0.TS: #NM; reserved bits: #GP(0).
 *  - stmxcsr m32     same checks (no #GP); writes MXCSR to memory.
 *                    (MXCSR goes through KVM_GET/SET_XSAVE: KVM_GET/SET_FPU drop it here.)
 *  - lfence / mfence / sfence   no-op (the exit to us is already serializing).
 *  - rdtscp          CR4.TSD and CPL > 0: #GP(0); else EDX:EAX = guest TSC, ECX = TSC_AUX
 *                    (Linux's rdtsc_ordered() uses it when the CPU reports RDTSCP, and on
 *                    this host the guest sees the host's CPUID).
 * A LOCK prefix on any of them is #UD. A memory operand that is not mapped (or not
 * writable, for stores) gets the #PF the CPU would raise, with CR2 and the error code.
 * Declined: real and virtual-8086 mode, 16-bit addressing, RFLAGS.TF set (a #DB would be
 * owed), an event already being delivered, pending x87 exceptions, 32-bit paging modes for
 * stores (KVM_TRANSLATE reports presence only), non-canonical memory operands.
 *
 * Guards (the event loop is never blocked: each completion is one short synchronous step):
 *  - no progress: the same RIP with byte-identical registers completed back-to-back more
 *    than `maxRepeatsWithoutProgress` times, each within `progressWindowMs` of the previous
 *    (a guest-timer-paced repeat, like an idle CPU's tick entering the same stub, is slower);
 *  - storm: more than `maxPerSecond` completions per second on one vCPU for
 *    `stormSeconds` seconds in a row.
 * Both decline with the reason, so the VM ends in internal-error instead of spinning.
 */
import { native } from '../../native';
import { Struct, f, viewOf } from '../../util/struct';
import { loggerFor } from '../../util/logger';
import type { GuestMemory } from '../guest-memory';
import { CodeMode, DecodedInstruction, GprName, MAX_INSTRUCTION_LENGTH, decodeInstruction, hex } from './insn-decode';
import { CR0_PG, EFER_LMA, RegName, getReg, getSegment, getSreg, setRegs, setSregs } from './kvm-structs';

const log = loggerFor('insn-completer');

/** struct kvm_vcpu_events (asm/kvm.h, KVM_GET/SET_VCPU_EVENTS). */
export const KVM_VCPU_EVENTS = new Struct('kvm_vcpu_events', 64, {
  exception_injected: f(0, 'u8'), exception_nr: f(1, 'u8'), exception_has_error_code: f(2, 'u8'),
  exception_pending: f(3, 'u8'), exception_error_code: f(4, 'u32'),
  interrupt_injected: f(8, 'u8'), interrupt_nr: f(9, 'u8'), interrupt_soft: f(10, 'u8'), interrupt_shadow: f(11, 'u8'),
  nmi_injected: f(12, 'u8'), nmi_pending: f(13, 'u8'), nmi_masked: f(14, 'u8'),
  sipi_vector: f(16, 'u32'), flags: f(20, 'u32'),
  exception_has_payload: f(55, 'u8'), exception_payload: f(56, 'u64'),
});
/** struct kvm_xsave: MXCSR in the legacy (FXSAVE) area, XSTATE_BV in the XSAVE header. */
const XSAVE_MXCSR_OFFSET = 24;
const XSAVE_XSTATE_BV_OFFSET = 512;
const XFEATURE_SSE = 1n << 1n;
/** struct kvm_fpu: the x87 status word (ES, bit 7, flags a pending unmasked exception). */
const KVM_FPU_FSW_OFFSET = 130;
const FSW_ES = 1 << 7;

/** Exception vectors. */
export const VECTOR = { BP: 3, UD: 6, NM: 7, GP: 13, PF: 14 } as const;
const VECTOR_NAME: Record<number, string> = { 3: '#BP', 6: '#UD', 7: '#NM', 13: '#GP', 14: '#PF' };

const RFLAGS_CF = 1n << 0n;
const RFLAGS_PF = 1n << 2n;
const RFLAGS_AF = 1n << 4n;
const RFLAGS_ZF = 1n << 6n;
const RFLAGS_SF = 1n << 7n;
const RFLAGS_TF = 1n << 8n;
const RFLAGS_OF = 1n << 11n;
const RFLAGS_RF = 1n << 16n;
const RFLAGS_VM = 1n << 17n;
const RFLAGS_AC = 1n << 18n;
const CR0_PE = 1n << 0n;
const CR0_MP = 1n << 1n;
const CR0_EM = 1n << 2n;
const CR0_TS = 1n << 3n;
const CR0_WP = 1n << 16n;
const CR4_OSFXSR = 1n << 9n;
const CR4_SMAP = 1n << 21n;
const CR4_LA57 = 1n << 12n;
const CR4_TSD = 1n << 2n;
const MSR_IA32_TSC = 0x10;
const MSR_TSC_AUX = 0xc000_0103;
/** MXCSR bits a CPU with DAZ accepts (MXCSR_MASK 0xffff); others raise #GP(0) in ldmxcsr. */
const MXCSR_WRITABLE = 0xffff;

/** Page-table entry bits and the #PF error-code bits they map to. */
const PTE_P = 1n << 0n;
const PTE_RW = 1n << 1n;
const PTE_US = 1n << 2n;
const PTE_ACCESSED = 1 << 5;
const PTE_DIRTY = 1 << 6;
const PTE_PS = 1n << 7n;
const PTE_ADDR = 0x000f_ffff_ffff_f000n;
const PF_PRESENT = 1;
const PF_WRITE = 2;
const PF_USER = 4;
const PAGE_SIZE = 4096;

export interface CompleterOptions {
  /** Identical-state back-to-back completions at one RIP before giving up (default 1000). */
  maxRepeatsWithoutProgress: number;
  /** Two completions closer than this count as back-to-back (default 1 ms). */
  progressWindowMs: number;
  /** Sustained completions per second per vCPU that count as a storm (default 20000). */
  maxPerSecond: number;
  /** Seconds in a row above maxPerSecond before giving up (default 5). */
  stormSeconds: number;
}
export const DEFAULT_COMPLETER_OPTIONS: CompleterOptions = {
  maxRepeatsWithoutProgress: 1000, progressWindowMs: 1, maxPerSecond: 20_000, stormSeconds: 5,
};

/** Why the last instruction was not completed (merged into the internal-error report). */
export interface CompletionDecline {
  vcpu: number;
  rip: string;
  instructionBytes: string;
  reason: string;
}

/** What the hook needs of a vCPU. */
export interface CompletableVcpu {
  readonly id: number;
  readonly fd: number;
}

type Outcome =
  | { kind: 'next' } // done: RIP past the instruction
  | { kind: 'trap'; vector: number } // RIP past it, then deliver (int3)
  | { kind: 'fault'; vector: number; errorCode?: number; cr2?: bigint } // RIP stays, deliver
  | { kind: 'decline'; reason: string };

const next: Outcome = { kind: 'next' };
const fault = (vector: number, errorCode?: number): Outcome => ({ kind: 'fault', vector, errorCode });
const decline = (reason: string): Outcome => ({ kind: 'decline', reason });

interface VcpuGuardState {
  lastRip: bigint;
  lastRegs?: Buffer;
  lastAt: number;
  repeats: number;
  windowStart: number;
  windowCount: number;
  stormWindows: number;
}

/** A page fault found while accessing a guest-linear address. */
class PageFault {
  constructor(readonly linear: bigint, readonly errorCode: number) {}
}

/**
 * Guest-linear memory as the faulting instruction sees it: translation through the
 * guest's page tables (4-level paging walked here, with the CPU's permission checks and
 * accessed/dirty bits; other paging modes through KVM_TRANSLATE, presence only).
 */
class LinearMemory {
  private readonly cr0: bigint;
  private readonly cr3: bigint;
  private readonly cr4: bigint;
  private readonly efer: bigint;

  constructor(
    private readonly memory: GuestMemory,
    private readonly vcpuFd: number,
    sregs: Buffer,
    private readonly cpl: number,
    private readonly rflags: bigint,
  ) {
    this.cr0 = getSreg(sregs, 'cr0');
    this.cr3 = getSreg(sregs, 'cr3');
    this.cr4 = getSreg(sregs, 'cr4');
    this.efer = getSreg(sregs, 'efer');
  }

  read(linear: bigint, length: number, access: 'data' | 'fetch' = 'data'): Buffer | PageFault {
    const out = Buffer.alloc(length);
    for (let done = 0; done < length;) {
      const at = linear + BigInt(done);
      const chunk = Math.min(length - done, PAGE_SIZE - Number(at & 0xfffn));
      const gpa = this.translate(at, access);
      if (gpa instanceof PageFault) return gpa;
      out.set(this.memory.slice(gpa, chunk), done);
      done += chunk;
    }
    return out;
  }

  /** Translates every page first, so a fault leaves memory untouched, then writes. */
  write(linear: bigint, data: Uint8Array): PageFault | undefined {
    const pieces: [number, number, number][] = [];
    for (let done = 0; done < data.length;) {
      const at = linear + BigInt(done);
      const chunk = Math.min(data.length - done, PAGE_SIZE - Number(at & 0xfffn));
      const gpa = this.translate(at, 'write');
      if (gpa instanceof PageFault) return gpa;
      pieces.push([gpa, done, chunk]);
      done += chunk;
    }
    for (const [gpa, from, len] of pieces) this.memory.write(gpa, data.subarray(from, from + len));
    return undefined;
  }

  /** Instruction bytes at a linear address: as many as are mapped, up to `max`. */
  fetch(linear: bigint, max: number): Buffer {
    const first = Math.min(max, PAGE_SIZE - Number(linear & 0xfffn));
    const head = this.read(linear, first, 'fetch');
    if (head instanceof PageFault) return Buffer.alloc(0);
    if (first === max) return head;
    const tail = this.read(linear + BigInt(first), max - first, 'fetch');
    return tail instanceof PageFault ? head : Buffer.concat([head, tail]);
  }

  private translate(linear: bigint, access: 'data' | 'fetch' | 'write'): number | PageFault {
    const write = access === 'write';
    if (!(this.cr0 & BigInt(CR0_PG))) return Number(linear & 0xffff_ffffn);
    if ((this.efer & BigInt(EFER_LMA)) && !(this.cr4 & CR4_LA57)) return this.walk4Level(linear, write, access === 'fetch');
    const t = native.kvmTranslate(this.vcpuFd, linear);
    if (!t.valid) return new PageFault(linear, (write ? PF_WRITE : 0) | (this.cpl === 3 ? PF_USER : 0));
    if (write) throw new Error('stores under 32-bit or 5-level paging are not supported (no permission bits from KVM_TRANSLATE)');
    return Number(t.physicalAddress);
  }

  /** The CPU's walk: permissions accumulate over levels; SMAP applies to data, not fetches. */
  private walk4Level(linear: bigint, write: boolean, fetch: boolean): number | PageFault {
    const user = this.cpl === 3;
    const errorBits = (write ? PF_WRITE : 0) | (user ? PF_USER : 0);
    let table = this.cr3 & PTE_ADDR;
    let writable = true;
    let userOk = true;
    const entries: number[] = [];
    for (let level = 4; level >= 1; level--) {
      const shift = BigInt(12 + 9 * (level - 1));
      const entryGpa = Number(table + ((linear >> shift) & 0x1ffn) * 8n);
      const entry = this.memory.view(entryGpa, 8).getBigUint64(0, true);
      if (!(entry & PTE_P)) return new PageFault(linear, errorBits);
      entries.push(entryGpa);
      writable &&= (entry & PTE_RW) !== 0n;
      userOk &&= (entry & PTE_US) !== 0n;
      const large = (level === 3 || level === 2) && (entry & PTE_PS) !== 0n;
      if (level === 1 || large) {
        const pageMask = (1n << shift) - 1n;
        const violation = (user && !userOk)
          || (write && !writable && (user || (this.cr0 & CR0_WP) !== 0n))
          // SMAP: supervisor data access to a user page with RFLAGS.AC clear.
          || (!user && !fetch && userOk && (this.cr4 & CR4_SMAP) !== 0n && !(this.rflags & RFLAGS_AC));
        if (violation) return new PageFault(linear, errorBits | PF_PRESENT);
        // The CPU sets accessed bits on every level and dirty on the leaf for writes.
        // Only byte 0 of an entry holds these bits; a one-byte OR keeps the rest intact.
        for (const gpa of entries) this.memory.slice(gpa, 1)[0] |= PTE_ACCESSED;
        if (write) this.memory.slice(entries[entries.length - 1], 1)[0] |= PTE_DIRTY;
        return Number(((entry & PTE_ADDR) & ~pageMask) | (linear & pageMask));
      }
      table = entry & PTE_ADDR;
    }
    throw new Error('unreachable: page walk ended without a leaf');
  }
}

/** The state one completion works on: registers, mode and memory of the faulting vCPU. */
interface Context {
  regs: Buffer;
  sregs: Buffer;
  vcpuFd: number;
  cpl: number;
  mode: CodeMode;
  insn: DecodedInstruction;
  nextRip: bigint;
  mem: LinearMemory;
}

export class InstructionCompleter {
  /** Completions per instruction; injected faults as e.g. "clac #UD". */
  readonly counts = new Map<string, number>();
  lastDecline?: CompletionDecline;
  private readonly guards = new Map<number, VcpuGuardState>();
  private readonly options: CompleterOptions;

  constructor(private readonly memory: GuestMemory, options: Partial<CompleterOptions> = {}) {
    this.options = { ...DEFAULT_COMPLETER_OPTIONS, ...options };
  }

  /** Counts as a plain object (for QMP and logs), sorted by name. */
  countsObject(): Record<string, number> {
    return Object.fromEntries([...this.counts.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }

  /**
   * Tries to complete the instruction at the vCPU's CS:RIP. Returns true when the vCPU's
   * state was updated and it may run again; false (with `lastDecline` set) otherwise.
   */
  complete(vcpu: CompletableVcpu): boolean {
    const regs = native.kvmGetRegs(vcpu.fd);
    const sregs = native.kvmGetSregs(vcpu.fd);
    const rip = getReg(regs, 'rip');
    const rflags = getReg(regs, 'rflags');
    const cs = getSegment(sregs, 'cs');
    const efer = getSreg(sregs, 'efer');
    const mode: CodeMode = { long64: (efer & BigInt(EFER_LMA)) !== 0n && cs.l === 1, default32: cs.db === 1 };
    const cpl = cs.selector & 3;
    const csBase = mode.long64 ? 0n : BigInt(cs.base);
    const mem = new LinearMemory(this.memory, vcpu.fd, sregs, cpl, rflags);
    let bytes: Buffer = Buffer.alloc(0);
    const refuse = (reason: string): boolean => {
      this.lastDecline = { vcpu: vcpu.id, rip: '0x' + rip.toString(16), instructionBytes: hex(bytes), reason };
      log.warn(`vCPU ${vcpu.id}: not completing instruction at RIP 0x${rip.toString(16)} [${hex(bytes)}]: ${reason}`);
      return false;
    };
    try {
      bytes = mem.fetch(csBase + rip, MAX_INSTRUCTION_LENGTH);
    } catch (err) {
      return refuse(`cannot read the instruction: ${(err as Error).message}`);
    }
    if (!(getSreg(sregs, 'cr0') & CR0_PE)) return refuse('real mode is not handled by the completer');
    if (rflags & RFLAGS_VM) return refuse('virtual-8086 mode is not handled by the completer');
    if (rflags & RFLAGS_TF) return refuse('RFLAGS.TF is set: single-stepping a completed instruction is not supported');
    const decoded = decodeInstruction(bytes, mode);
    if (!decoded.ok) return refuse(decoded.reason);
    const insn = decoded.insn;
    const guardReason = this.checkGuards(vcpu.id, rip, regs, insn.mnemonic);
    if (guardReason) return refuse(guardReason);
    const events = native.kvmGetVcpuEvents(vcpu.fd);
    const ev = viewOf(events);
    if (KVM_VCPU_EVENTS.num(ev, 0, 'exception_injected') || KVM_VCPU_EVENTS.num(ev, 0, 'exception_pending')
      || KVM_VCPU_EVENTS.num(ev, 0, 'interrupt_injected') || KVM_VCPU_EVENTS.num(ev, 0, 'nmi_injected')) {
      return refuse('an event is already being delivered on this vCPU');
    }

    const ctx: Context = { regs, sregs, vcpuFd: vcpu.fd, cpl, mode, insn, nextRip: rip + BigInt(insn.length), mem };
    let outcome: Outcome;
    try {
      outcome = insn.prefixes.lock ? fault(VECTOR.UD) : execute(ctx);
    } catch (err) {
      if (err instanceof PageFault) outcome = { kind: 'fault', vector: VECTOR.PF, errorCode: err.errorCode, cr2: err.linear };
      else outcome = decline(`${insn.mnemonic}: ${(err as Error).message}`);
    }
    if (outcome.kind === 'decline') return refuse(outcome.reason);

    if (outcome.kind !== 'fault') setRegs(regs, { rip: ctx.nextRip });
    // RF is cleared once an instruction completes (or a fault is delivered).
    setRegs(regs, { rflags: getReg(regs, 'rflags') & ~RFLAGS_RF });
    native.kvmSetRegs(vcpu.fd, regs);
    let countKey: string = insn.mnemonic;
    if (outcome.kind === 'fault' || outcome.kind === 'trap') {
      if (outcome.kind === 'fault' && outcome.cr2 !== undefined) {
        setSregs(sregs, { cr2: outcome.cr2 });
        native.kvmSetSregs(vcpu.fd, sregs);
      }
      injectException(vcpu.fd, events, outcome.vector, outcome.kind === 'fault' ? outcome.errorCode : undefined);
      if (outcome.kind === 'fault') countKey = `${insn.mnemonic} ${VECTOR_NAME[outcome.vector]}`;
    }
    const count = (this.counts.get(countKey) ?? 0) + 1;
    this.counts.set(countKey, count);
    if (count === 1) log.info(`vCPU ${vcpu.id}: completing ${countKey} (first at RIP 0x${rip.toString(16)} [${hex(bytes.subarray(0, insn.length))}])`);
    return true;
  }

  private checkGuards(vcpuId: number, rip: bigint, regs: Buffer, mnemonic: string): string | undefined {
    const now = performance.now();
    let g = this.guards.get(vcpuId);
    if (!g) {
      g = { lastRip: -1n, lastAt: 0, repeats: 0, windowStart: now, windowCount: 0, stormWindows: 0 };
      this.guards.set(vcpuId, g);
    }
    const o = this.options;
    const backToBack = rip === g.lastRip && now - g.lastAt < o.progressWindowMs && g.lastRegs !== undefined && g.lastRegs.equals(regs);
    g.repeats = backToBack ? g.repeats + 1 : 0;
    g.lastRip = rip;
    g.lastAt = now;
    g.lastRegs = Buffer.from(regs);
    if (g.repeats > o.maxRepeatsWithoutProgress) {
      return `no progress: ${mnemonic} at this RIP was completed ${g.repeats} times back-to-back with identical registers (limit ${o.maxRepeatsWithoutProgress})`;
    }
    if (now - g.windowStart >= 1000) {
      g.stormWindows = g.windowCount > o.maxPerSecond ? g.stormWindows + 1 : 0;
      g.windowStart = now;
      g.windowCount = 0;
    }
    g.windowCount++;
    if (g.stormWindows >= o.stormSeconds) {
      return `completion storm: more than ${o.maxPerSecond} completions/s on this vCPU for ${g.stormWindows} s in a row`;
    }
    return undefined;
  }
}

function injectException(vcpuFd: number, events: Buffer, vector: number, errorCode?: number): void {
  KVM_VCPU_EVENTS.assign(viewOf(events), 0, {
    exception_injected: 1, exception_nr: vector, exception_pending: 0,
    exception_has_error_code: errorCode === undefined ? 0 : 1, exception_error_code: errorCode ?? 0,
    exception_has_payload: 0, exception_payload: 0n,
  });
  native.kvmSetVcpuEvents(vcpuFd, events);
}

function execute(ctx: Context): Outcome {
  switch (ctx.insn.mnemonic) {
    case 'int3': return { kind: 'trap', vector: VECTOR.BP };
    case 'clac': return setAc(ctx, false);
    case 'stac': return setAc(ctx, true);
    case 'popcnt': return popcnt(ctx);
    case 'fwait': return fwait(ctx);
    case 'ldmxcsr': return mxcsr(ctx, 'load');
    case 'stmxcsr': return mxcsr(ctx, 'store');
    case 'lfence': case 'mfence': case 'sfence': return next;
    case 'rdtscp': return rdtscp(ctx);
  }
}

function rdtscp(ctx: Context): Outcome {
  if (ctx.cpl > 0 && (getSreg(ctx.sregs, 'cr4') & CR4_TSD)) return fault(VECTOR.GP, 0);
  const [tsc, aux] = native.kvmGetMsrs(ctx.vcpuFd, [MSR_IA32_TSC, MSR_TSC_AUX]);
  setRegs(ctx.regs, { rax: tsc & 0xffff_ffffn, rdx: (tsc >> 32n) & 0xffff_ffffn, rcx: aux & 0xffff_ffffn });
  return next;
}

function setAc(ctx: Context, on: boolean): Outcome {
  if (ctx.cpl > 0) return fault(VECTOR.UD);
  const rflags = getReg(ctx.regs, 'rflags');
  setRegs(ctx.regs, { rflags: on ? rflags | RFLAGS_AC : rflags & ~RFLAGS_AC });
  return next;
}

function popcnt(ctx: Context): Outcome {
  const { insn } = ctx;
  const bits = BigInt(insn.operandBytes * 8);
  const mask = (1n << bits) - 1n;
  const modrm = insn.modrm!;
  let src: bigint;
  if (modrm.memory) {
    const data = readMemory(ctx, insn.operandBytes);
    src = data.readBigUInt64LE(0) & mask;
  } else {
    src = readGpr(ctx.regs, modrm.rm) & mask;
  }
  let count = 0n;
  for (let v = src; v; v &= v - 1n) count++;
  writeGpr(ctx.regs, modrm.reg, count, insn.operandBytes);
  const cleared = RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_CF | RFLAGS_PF;
  const rflags = getReg(ctx.regs, 'rflags') & ~cleared;
  setRegs(ctx.regs, { rflags: src === 0n ? rflags | RFLAGS_ZF : rflags });
  return next;
}

function fwait(ctx: Context): Outcome {
  const cr0 = getSreg(ctx.sregs, 'cr0');
  if ((cr0 & CR0_MP) && (cr0 & CR0_TS)) return fault(VECTOR.NM);
  const fpu = native.kvmGetFpu(ctx.vcpuFd);
  if (fpu.readUInt16LE(KVM_FPU_FSW_OFFSET) & FSW_ES) return decline('a pending x87 exception (#MF) is not delivered by the completer');
  return next;
}

function mxcsr(ctx: Context, direction: 'load' | 'store'): Outcome {
  const cr0 = getSreg(ctx.sregs, 'cr0');
  if ((cr0 & CR0_EM) || !(getSreg(ctx.sregs, 'cr4') & CR4_OSFXSR)) return fault(VECTOR.UD);
  if (cr0 & CR0_TS) return fault(VECTOR.NM);
  if (direction === 'load') {
    const value = readMemory(ctx, 4).readUInt32LE(0);
    if (value & ~MXCSR_WRITABLE) return fault(VECTOR.GP, 0);
    writeMxcsr(ctx.vcpuFd, value);
  } else {
    const out = Buffer.alloc(4);
    out.writeUInt32LE(readMxcsr(ctx.vcpuFd), 0);
    writeMemory(ctx, out);
  }
  return next;
}

/**
 * MXCSR goes through KVM_GET/SET_XSAVE: on this host KVM_GET_FPU reports MXCSR as 0 and
 * KVM_SET_FPU ignores it (measured). The kernel copies MXCSR in only when XSTATE_BV has
 * SSE (or YMM), so SSE is marked present; absent features read back as their init values,
 * so the XMM registers keep what they were.
 */
function readMxcsr(vcpuFd: number): number {
  return native.kvmGetXsave(vcpuFd).readUInt32LE(XSAVE_MXCSR_OFFSET);
}

function writeMxcsr(vcpuFd: number, value: number): void {
  const xsave = native.kvmGetXsave(vcpuFd);
  xsave.writeUInt32LE(value >>> 0, XSAVE_MXCSR_OFFSET);
  xsave.writeBigUInt64LE(xsave.readBigUInt64LE(XSAVE_XSTATE_BV_OFFSET) | XFEATURE_SSE, XSAVE_XSTATE_BV_OFFSET);
  native.kvmSetXsave(vcpuFd, xsave);
}

/** kvm_regs names by x86 register encoding. */
const REG_BY_ENCODING: RegName[] = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];

function readGpr(regs: Buffer, encoding: number): bigint {
  return getReg(regs, REG_BY_ENCODING[encoding]);
}

/** Register writes as the CPU does them: 32-bit results zero-extend, 16-bit ones merge. */
function writeGpr(regs: Buffer, encoding: number, value: bigint, bytes: 2 | 4 | 8): void {
  const name = REG_BY_ENCODING[encoding];
  const v = bytes === 2 ? (getReg(regs, name) & ~0xffffn) | (value & 0xffffn) : value & ((1n << BigInt(bytes * 8)) - 1n);
  setRegs(regs, { [name]: v });
}

/** The memory operand's linear address: segment base (FS/GS only in 64-bit mode) + EA. */
function operandAddress(ctx: Context): bigint {
  const m = ctx.insn.modrm!.memory!;
  const gpr = (name: GprName) => getReg(ctx.regs, name as RegName);
  let ea = m.disp;
  if (m.base) ea += gpr(m.base);
  if (m.index) ea += gpr(m.index) * BigInt(m.scale);
  if (m.ripRelative) ea += ctx.nextRip;
  ea &= (1n << BigInt(ctx.insn.addressBytes * 8)) - 1n;
  const segment = ctx.insn.prefixes.segment ?? m.defaultSegment;
  const applyBase = !ctx.mode.long64 || segment === 'fs' || segment === 'gs';
  const linear = applyBase ? ea + BigInt(getSegment(ctx.sregs, segment).base) : ea;
  if (ctx.mode.long64 && !isCanonical(linear)) {
    // Non-canonical: #SS for stack-segment references, #GP otherwise; declined rather than guessed.
    throw new Error(`non-canonical memory operand 0x${linear.toString(16)}`);
  }
  return ctx.mode.long64 ? linear & 0xffff_ffff_ffff_ffffn : linear & 0xffff_ffffn;
}

function isCanonical(linear: bigint): boolean {
  const top = (linear & 0xffff_ffff_ffff_ffffn) >> 47n;
  return top === 0n || top === 0x1ffffn;
}

function readMemory(ctx: Context, length: number): Buffer {
  const data = ctx.mem.read(operandAddress(ctx), length);
  if (data instanceof PageFault) throw data;
  return length >= 8 ? data : Buffer.concat([data, Buffer.alloc(8 - length)]);
}

function writeMemory(ctx: Context, data: Uint8Array): void {
  const result = ctx.mem.write(operandAddress(ctx), data);
  if (result instanceof PageFault) throw result;
}

/**
 * Installs the completer as the VM's `instructionCompleter` hook and returns it (for its
 * counts and last decline). Call once per VM, before its vCPUs run.
 */
export function installInstructionCompleter<V extends CompletableVcpu>(
  vm: { memory: GuestMemory; instructionCompleter?: (vcpu: V) => boolean },
  options: Partial<CompleterOptions> = {},
): InstructionCompleter {
  const completer = new InstructionCompleter(vm.memory, options);
  vm.instructionCompleter = (vcpu) => completer.complete(vcpu);
  return completer;
}

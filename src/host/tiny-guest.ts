/**
 * A tiny x86-64 guest for probing what the host's KVM can do: one VM, one vCPU, 2 MiB of
 * RAM (a memfd) identity-mapped by one 2 MiB user-accessible page, a GDT with ring-0 and
 * ring-3 segments and a 64-bit TSS whose full, all-zero I/O-permission bitmap lets ring 3
 * use every port (on kvm-pvm ring 3 reads IOPL 0 whatever `iretq` loaded: the bitmap is
 * what grants port I/O — shared/HOST-FACTS.md), and an IDT whose handlers report their
 * vector on `TINY_PORT.exception`.
 *
 * The vCPU starts straight in long mode at CPL 0 (set through KVM_SET_SREGS; no boot
 * code) at `TINY_LAYOUT.kernelCode`. Ring-3 code placed at `TINY_LAYOUT.userCode` is
 * reached the way a real kernel reaches it: the ring-0 code `iretq`s there
 * (`enterUserCode`). Machine code is given as bytes; `asm` names the few encodings the
 * probe needs.
 */
import { closeQuietly, native } from '../native';
import { KVM_MEM_LOG_DIRTY_PAGES, type CpuidEntry, type MappedMemory, type VcpuThread } from '../native/kvm';
import { EXIT, EXIT_KICKED, KVM_RUN, KVM_EXIT_IO_OUT } from '../hypervisor/x86/kvm-run';
import {
  CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, KVM_REGS, RegName, Segment, getReg, getSegment, getSreg,
  setDtable, setSegment, setSregs,
} from '../hypervisor/x86/kvm-structs';
import { Struct, f, viewOf } from '../util/struct';

/** Guest-physical layout (linear == physical). */
export const TINY_LAYOUT = {
  pml4: 0x1000,
  pdpt: 0x2000,
  pd: 0x3000,
  gdt: 0x4000,
  idt: 0x5000,
  /** 64-bit TSS, followed by its 8 KiB I/O bitmap and the terminating 0xff byte (ends below 0x9000). */
  tss: 0x6000,
  /** One 16-byte handler per exception vector 0..31. */
  handlers: 0x9000,
  /** Ring-0 stack (one page below it); also TSS.RSP0. */
  kernelStackTop: 0xb000,
  /** Ring-3 stack (one page below it). */
  userStackTop: 0xc000,
  kernelCode: 0x10000,
  userCode: 0x11000,
  /** 4 KiB of zeroed scratch data, 64-byte aligned (an XSAVE area, a CMPXCHG16B target...). */
  data: 0x12000,
  ramBytes: 0x200000,
} as const;

/** GDT selectors (ring-3 ones carry RPL 3). */
export const TINY_SELECTOR = { kernelCode: 0x08, kernelData: 0x10, userData: 0x1b, userCode: 0x23, tss: 0x28 } as const;

/** Ports the guest writes a byte to; every `out` to them is an exit to us. */
export const TINY_PORT = {
  /** IDT handlers write their vector here, then `hlt` (faults) or `iretq` (#BP, a trap). */
  exception: 0xe0,
  /** Probe code writes a marker here when it got past the instruction under test. */
  mark: 0xe1,
} as const;

/** Where KVM may put its real-mode TSS: three pages below 4 GiB, outside our RAM. */
const KVM_TSS_ADDRESS = 0xfffbd000;

const PTE_PRESENT = 1n << 0n;
const PTE_WRITABLE = 1n << 1n;
const PTE_USER = 1n << 2n;
const PDE_LARGE_PAGE = 1n << 7n;

const CR0_MP = 1 << 1;
const CR0_NE = 1 << 5;
const CR0_WP = 1 << 16;
const CR4_OSFXSR = 1 << 9;
const CR4_OSXMMEXCPT = 1 << 10;
export const CR4_OSXSAVE = 1 << 18;
export const EFER_SCE = 1 << 0;
const RFLAGS_RESERVED_ONE = 0x2;
const RFLAGS_IOPL3 = 0x3000;

/** 64-bit TSS (Intel SDM vol. 3 §8.7): RSP0 and the I/O map base; the bitmap follows it. */
const TSS64 = new Struct('tss64', 104, { rsp0: f(4, 'u64'), ioMapBase: f(102, 'u16') });
const IO_BITMAP_BYTES = 8192;
/** The TSS limit covers the bitmap plus its terminating 0xff byte. */
const TSS_LIMIT = TSS64.size + IO_BITMAP_BYTES;

/** struct kvm_xcrs (asm/kvm.h): nr_xcrs, flags, then kvm_xcr {xcr, reserved, value}[16]. */
const KVM_XCRS = new Struct('kvm_xcrs', 392, { nrXcrs: f(0, 'u32'), flags: f(4, 'u32'), xcr0Index: f(8, 'u32'), xcr0Value: f(16, 'u64') });

const VECTORS_WITH_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17, 21]);
const VECTOR_BREAKPOINT = 3;
const EXCEPTION_VECTORS = 32;
const HANDLER_BYTES = 16;
const IDT_GATE_BYTES = 16;
const INTERRUPT_GATE_PRESENT_DPL0 = 0x8en;

/** Machine code the probe uses, as bytes (64-bit mode). */
export const asm = {
  hlt: [0xf4],
  int3: [0xcc],
  cpuid: [0x0f, 0xa2],
  syscall: [0x0f, 0x05],
  iretq: [0x48, 0xcf],
  xorEaxEax: [0x31, 0xc0],
  xorEcxEcx: [0x31, 0xc9],
  xorEdxEdx: [0x31, 0xd2],
  movEaxImm32: (value: number) => [0xb8, ...u32(value)],
  movEcxImm32: (value: number) => [0xb9, ...u32(value)],
  movAlImm8: (value: number) => [0xb0, value & 0xff],
  outImm8Al: (port: number) => [0xe6, port & 0xff],
  /** mov [abs32], al */
  movAbs32Al: (address: number) => [0x88, 0x04, 0x25, ...u32(address)],
  /** xrstor [abs32] (0F AE /5) — RFBM in EDX:EAX. */
  xrstorAbs32: (address: number) => [0x0f, 0xae, 0x2c, 0x25, ...u32(address)],
  /** lock cmpxchg16b [abs32] (F0 REX.W 0F C7 /1). */
  lockCmpxchg16bAbs32: (address: number) => [0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x25, ...u32(address)],
  /** push imm32 (sign-extended to 64 bits). */
  pushImm32: (value: number) => [0x68, ...u32(value)],
  /** `out mark, al` with `value`, then `hlt`. */
  markAndHalt: (value: number) => [0xb0, value & 0xff, 0xe6, TINY_PORT.mark, 0xf4],
  /**
   * Ring-0 code that enters `TINY_LAYOUT.userCode` at CPL 3 with `iretq`: pushes SS, RSP,
   * RFLAGS (IOPL 3, interrupts off), CS and RIP, as a kernel returning to userspace does.
   */
  enterUserCode: () => [
    ...asm.pushImm32(TINY_SELECTOR.userData),
    ...asm.pushImm32(TINY_LAYOUT.userStackTop),
    ...asm.pushImm32(RFLAGS_IOPL3 | RFLAGS_RESERVED_ONE),
    ...asm.pushImm32(TINY_SELECTOR.userCode),
    ...asm.pushImm32(TINY_LAYOUT.userCode),
    ...asm.iretq,
  ],
};

/** rdtsc; shl rdx, 32; or rax, rdx — the 64-bit TSC in RAX. */
const READ_TSC = [0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0];
const MOV_RSI_RAX = [0x48, 0x89, 0xc6];
const MOV_RDI_RAX = [0x48, 0x89, 0xc7];
const XOR_R8D_R8D = [0x45, 0x31, 0xc0];
const INC_R8 = [0x49, 0xff, 0xc0];
const DEC_ECX = [0xff, 0xc9];

/**
 * A loop that counts forever and times itself with the guest's TSC, so its speed does
 * not depend on how promptly the host stops it: chunks of `iterationsPerChunk` iterations
 * of `dec ecx; jnz` (two instructions, as in HOST-FACTS.md), and after each chunk the TSC
 * in RDI, then the chunk count in R8 (RSI holds the TSC at the start). Read it with
 * `TinyGuest.timedCount`. `incrementOffset` is where `inc r8` sits: a vCPU stopped there
 * has stored the chunk's TSC but not yet counted the chunk.
 */
export function tscTimedCountLoop(iterationsPerChunk: number): { code: number[]; incrementOffset: number } {
  const prologue = [...READ_TSC, ...MOV_RSI_RAX, ...MOV_RDI_RAX, ...XOR_R8D_R8D];
  const chunk = [...asm.movEcxImm32(iterationsPerChunk), ...DEC_ECX, 0x75, 0x100 - (DEC_ECX.length + 2) /* jnz dec */];
  const bookkeeping = [...READ_TSC, ...MOV_RDI_RAX];
  const loopLength = chunk.length + bookkeeping.length + INC_R8.length + 2;
  const jumpBack = [0xeb, 0x100 - loopLength]; // jmp to the chunk's start
  return {
    code: [...prologue, ...chunk, ...bookkeeping, ...INC_R8, ...jumpBack],
    incrementOffset: prologue.length + chunk.length + bookkeeping.length,
  };
}

function u32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
}

/** What stopped the vCPU, decoded (an `out` to TINY_PORT.exception becomes `exception`, with the CPU's frame). */
export type TinyExit =
  | { kind: 'out'; port: number; value: number; rip: bigint; cpl: number }
  | { kind: 'exception'; vector: number; errorCode?: bigint; faultRip: bigint; faultCs: number; cr2: bigint }
  | { kind: 'internal-error'; suberror: number; rip: bigint }
  | { kind: 'hlt'; rip: bigint }
  | { kind: 'shutdown' }
  | { kind: 'kicked' }
  | { kind: 'timeout' }
  | { kind: 'other'; reason: number };

export interface TinyGuestOptions {
  /** Ring-0 code at TINY_LAYOUT.kernelCode; the vCPU starts there at CPL 0. */
  kernelCode: readonly number[];
  /** Ring-3 code at TINY_LAYOUT.userCode (reached with `asm.enterUserCode()`). */
  userCode?: readonly number[];
  /** The guest's CPUID (KVM_SET_CPUID2); default: KVM's supported CPUID. */
  cpuid?: readonly CpuidEntry[];
  /** CR4 bits added to PAE | OSFXSR | OSXMMEXCPT (e.g. CR4_OSXSAVE). */
  extraCr4?: number;
  /** EFER bits added to LME | LMA (e.g. EFER_SCE). */
  extraEfer?: number;
  /** XCR0 to set through KVM_SET_XCRS (needs extraCr4 CR4_OSXSAVE). */
  xcr0?: bigint;
  /** MSRs to set (KVM_SET_MSRS) before the first run. */
  msrs?: [number, bigint][];
  /** Log dirty pages of the RAM slot (KVM_MEM_LOG_DIRTY_PAGES). */
  dirtyLog?: boolean;
  /** KVM device path (default /dev/kvm). */
  kvmDevice?: string;
}

export class TinyGuest {
  readonly ram: Uint8Array;
  readonly vcpuFd: number;
  readonly vmFd: number;
  private readonly kvmFd: number;
  private readonly memFd: number;
  private readonly mapping: MappedMemory;
  private readonly mmapSize: number;
  private thread?: VcpuThread;
  private pending?: (reason: number) => void;
  private closed = false;

  /** Builds the VM; throws (with every fd closed) when any KVM step fails. */
  constructor(private readonly options: TinyGuestOptions) {
    const opened: number[] = [];
    let mapping: MappedMemory | undefined;
    try {
      this.kvmFd = native.kvmOpen(options.kvmDevice ?? '/dev/kvm');
      opened.push(this.kvmFd);
      this.vmFd = native.kvmCreateVm(this.kvmFd);
      opened.push(this.vmFd);
      native.kvmSetTssAddr(this.vmFd, KVM_TSS_ADDRESS);
      this.memFd = native.memfdCreate('baton-host-probe');
      opened.push(this.memFd);
      native.ftruncate(this.memFd, TINY_LAYOUT.ramBytes);
      mapping = native.mmapShared(this.memFd, TINY_LAYOUT.ramBytes);
      this.mapping = mapping;
      this.ram = new Uint8Array(mapping.buffer);
      native.kvmSetUserMemoryRegion(this.vmFd, {
        slot: 0,
        flags: options.dirtyLog ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        guestPhysAddr: 0,
        memorySize: TINY_LAYOUT.ramBytes,
        userspaceAddr: mapping.address,
      });
      this.vcpuFd = native.kvmCreateVcpu(this.vmFd, 0);
      opened.push(this.vcpuFd);
      this.mmapSize = native.kvmGetVcpuMmapSize(this.kvmFd);
      // CPUID before SREGS: KVM refuses CR4.OSXSAVE unless the guest's CPUID has XSAVE.
      native.kvmSetCpuid2(this.vcpuFd, [...(options.cpuid ?? native.kvmGetSupportedCpuid(this.kvmFd))]);
      this.writeTables();
      this.ram.set(options.kernelCode, TINY_LAYOUT.kernelCode);
      this.ram.set(options.userCode ?? asm.hlt, TINY_LAYOUT.userCode);
      this.setInitialState();
    } catch (err) {
      if (mapping) native.munmap(mapping.address, TINY_LAYOUT.ramBytes);
      for (const fd of opened.reverse()) closeQuietly(fd);
      throw err;
    }
  }

  private view(gpa: number, length: number): DataView {
    return new DataView(this.ram.buffer, gpa, length);
  }

  private writeTables(): void {
    const { pml4, pdpt, pd, gdt, idt, tss, handlers } = TINY_LAYOUT;
    const table = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    this.view(pml4, 8).setBigUint64(0, BigInt(pdpt) | table, true);
    this.view(pdpt, 8).setBigUint64(0, BigInt(pd) | table, true);
    this.view(pd, 8).setBigUint64(0, table | PDE_LARGE_PAGE, true); // the whole 2 MiB at 0, user-accessible

    const descriptors = this.view(gdt, 0x38);
    descriptors.setBigUint64(TINY_SELECTOR.kernelCode, codeOrDataDescriptor({ code: true, dpl: 0 }), true);
    descriptors.setBigUint64(TINY_SELECTOR.kernelData, codeOrDataDescriptor({ code: false, dpl: 0 }), true);
    descriptors.setBigUint64(TINY_SELECTOR.userData & ~3, codeOrDataDescriptor({ code: false, dpl: 3 }), true);
    descriptors.setBigUint64(TINY_SELECTOR.userCode & ~3, codeOrDataDescriptor({ code: true, dpl: 3 }), true);
    // 64-bit available TSS (type 9): 16 bytes, base[63:32] in the second half (0 here).
    const tssDescriptor = BigInt(TSS_LIMIT & 0xffff) | (BigInt(tss & 0xffffff) << 16n) | (0x89n << 40n)
      | (BigInt((TSS_LIMIT >>> 16) & 0xf) << 48n) | (BigInt((tss >>> 24) & 0xff) << 56n);
    descriptors.setBigUint64(TINY_SELECTOR.tss, tssDescriptor, true);
    descriptors.setBigUint64(TINY_SELECTOR.tss + 8, 0n, true);

    const tssView = this.view(tss, TSS_LIMIT + 1);
    TSS64.assign(tssView, 0, { rsp0: TINY_LAYOUT.kernelStackTop, ioMapBase: TSS64.size });
    // The bitmap (all zero: every port allowed) is already zero in a fresh memfd; the byte after it must be 0xff.
    tssView.setUint8(TSS_LIMIT, 0xff);

    const gates = this.view(idt, EXCEPTION_VECTORS * IDT_GATE_BYTES);
    for (let vector = 0; vector < EXCEPTION_VECTORS; vector++) {
      const handler = handlers + vector * HANDLER_BYTES;
      const tail = vector === VECTOR_BREAKPOINT ? asm.iretq : asm.hlt; // #BP is a trap: resume after it
      this.ram.set([...asm.movAlImm8(vector), ...asm.outImm8Al(TINY_PORT.exception), ...tail], handler);
      const low = BigInt(handler & 0xffff) | (BigInt(TINY_SELECTOR.kernelCode) << 16n)
        | (INTERRUPT_GATE_PRESENT_DPL0 << 40n) | (BigInt((handler >>> 16) & 0xffff) << 48n);
      gates.setBigUint64(vector * IDT_GATE_BYTES, low, true);
      gates.setBigUint64(vector * IDT_GATE_BYTES + 8, 0n, true);
    }
  }

  private setInitialState(): void {
    const sregs = native.kvmGetSregs(this.vcpuFd);
    const flat = { base: 0, limit: 0xffffffff, present: 1, s: 1, g: 1 };
    const code: Segment = { ...flat, selector: TINY_SELECTOR.kernelCode, type: 11, dpl: 0, db: 0, l: 1 };
    const data: Segment = { ...flat, selector: TINY_SELECTOR.kernelData, type: 3, dpl: 0, db: 1, l: 0 };
    setSegment(sregs, 'cs', code);
    for (const name of ['ds', 'es', 'fs', 'gs', 'ss'] as const) setSegment(sregs, name, data);
    setSegment(sregs, 'tr', { base: TINY_LAYOUT.tss, limit: TSS_LIMIT, selector: TINY_SELECTOR.tss, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 });
    setSegment(sregs, 'ldt', { base: 0, limit: 0xffff, selector: 0, type: 2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 });
    setDtable(sregs, 'gdt', TINY_LAYOUT.gdt, 0x37);
    setDtable(sregs, 'idt', TINY_LAYOUT.idt, EXCEPTION_VECTORS * IDT_GATE_BYTES - 1);
    setSregs(sregs, {
      cr0: (CR0_PG | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE) >>> 0,
      cr3: TINY_LAYOUT.pml4,
      cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | (this.options.extraCr4 ?? 0),
      efer: EFER_LME | EFER_LMA | (this.options.extraEfer ?? 0),
    });
    native.kvmSetSregs(this.vcpuFd, sregs);
    if (this.options.xcr0 !== undefined) {
      const xcrs = Buffer.alloc(native.structSizes.xcrs);
      KVM_XCRS.assign(viewOf(xcrs), 0, { nrXcrs: 1, xcr0Index: 0, xcr0Value: this.options.xcr0 });
      native.kvmSetXcrs(this.vcpuFd, xcrs);
    }
    if (this.options.msrs) {
      const set = native.kvmSetMsrs(this.vcpuFd, this.options.msrs);
      if (set !== this.options.msrs.length) {
        throw new Error(`KVM_SET_MSRS refused MSR 0x${this.options.msrs[set][0].toString(16)} on the probe guest`);
      }
    }
    const regs = Buffer.alloc(native.structSizes.regs);
    KVM_REGS.assign(viewOf(regs), 0, { rip: TINY_LAYOUT.kernelCode, rsp: TINY_LAYOUT.kernelStackTop, rflags: RFLAGS_RESERVED_ONE });
    native.kvmSetRegs(this.vcpuFd, regs);
  }

  /** Resumes the vCPU and resolves with its next exit (or `timeout`, after kicking it). */
  run(timeoutMs: number): Promise<TinyExit> {
    return this.resumeUntilExit(timeoutMs).then((reason) => (reason === undefined ? { kind: 'timeout' } : this.decode(reason)));
  }

  /**
   * Lets the guest run for about `ms` milliseconds, then kicks it; resolves with the
   * time it actually ran (resume to kick, in seconds) and the exit that stopped it.
   */
  async runFor(ms: number): Promise<{ seconds: number; exit: TinyExit }> {
    const started = process.hrtime.bigint();
    let kickedAt: bigint | undefined;
    const timer = setTimeout(() => {
      kickedAt = process.hrtime.bigint();
      this.thread?.kick();
    }, ms);
    const reason = await this.resumeUntilExit(ms + 5000);
    clearTimeout(timer);
    const ended = kickedAt ?? process.hrtime.bigint();
    return { seconds: Number(ended - started) / 1e9, exit: reason === undefined ? { kind: 'timeout' } : this.decode(reason) };
  }

  /** The vCPU's registers (only while it is stopped at an exit). */
  reg(name: RegName): bigint {
    return getReg(native.kvmGetRegs(this.vcpuFd), name);
  }

  /**
   * What a `tscTimedCountLoop` placed at `loopAddress` has counted, stopped at any point:
   * iterations of whole chunks and the TSC ticks they took.
   */
  timedCount(loopAddress: number, iterationsPerChunk: number, incrementOffset: number): { iterations: number; tscTicks: bigint } {
    const regs = native.kvmGetRegs(this.vcpuFd);
    let chunks = getReg(regs, 'r8');
    if (getReg(regs, 'rip') === BigInt(loopAddress + incrementOffset)) chunks += 1n; // TSC stored, count not yet
    return { iterations: Number(chunks) * iterationsPerChunk, tscTicks: getReg(regs, 'rdi') - getReg(regs, 'rsi') };
  }

  /** The guest's TSC frequency in kHz (KVM_GET_TSC_KHZ). */
  tscKhz(): number {
    return native.kvmGetTscKhz(this.vcpuFd);
  }

  /** Whether the page holding `gpa` is marked dirty (needs `dirtyLog`); reading clears the log. */
  pageDirty(gpa: number): boolean {
    const pages = TINY_LAYOUT.ramBytes / 4096;
    const bitmap = Buffer.alloc(Math.ceil(pages / 64) * 8);
    native.kvmGetDirtyLog(this.vmFd, 0, bitmap);
    const page = Math.floor(gpa / 4096);
    return (bitmap[page >> 3] & (1 << (page & 7))) !== 0;
  }

  private resumeUntilExit(timeoutMs: number): Promise<number | undefined> {
    if (this.closed) return Promise.reject(new Error('the probe guest is closed'));
    return new Promise((resolve) => {
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        this.thread?.kick();
      }, timeoutMs);
      this.pending = (reason) => {
        clearTimeout(timer);
        this.pending = undefined;
        resolve(timedOut && reason === EXIT_KICKED ? undefined : reason);
      };
      this.thread ??= native.vcpuThreadStart(this.vcpuFd, this.mmapSize, (reason) => this.pending?.(reason));
      this.thread.resume();
    });
  }

  private decode(reason: number): TinyExit {
    if (reason === EXIT_KICKED) return { kind: 'kicked' };
    const regs = native.kvmGetRegs(this.vcpuFd);
    const rip = getReg(regs, 'rip');
    const run = new DataView(this.thread!.run);
    switch (reason) {
      case EXIT.IO: {
        const direction = KVM_RUN.num(run, 0, 'io_direction');
        if (direction !== KVM_EXIT_IO_OUT) return { kind: 'other', reason };
        const port = KVM_RUN.num(run, 0, 'io_port');
        const value = run.getUint8(KVM_RUN.num(run, 0, 'io_data_offset'));
        const sregs = native.kvmGetSregs(this.vcpuFd);
        if (port === TINY_PORT.exception) return this.exceptionAt(value, getReg(regs, 'rsp'), sregs);
        return { kind: 'out', port, value, rip, cpl: getSegment(sregs, 'cs').dpl };
      }
      case EXIT.INTERNAL_ERROR:
        return { kind: 'internal-error', suberror: KVM_RUN.num(run, 0, 'internal_suberror'), rip };
      case EXIT.HLT:
        return { kind: 'hlt', rip };
      case EXIT.SHUTDOWN:
        return { kind: 'shutdown' };
      default:
        return { kind: 'other', reason };
    }
  }

  /** Reads the exception frame the CPU pushed (the handler has pushed nothing). */
  private exceptionAt(vector: number, rsp: bigint, sregs: Buffer): TinyExit {
    const hasErrorCode = VECTORS_WITH_ERROR_CODE.has(vector);
    const frame = this.view(Number(rsp), 6 * 8);
    const slot = (i: number) => frame.getBigUint64(i * 8, true);
    const first = hasErrorCode ? 1 : 0;
    return {
      kind: 'exception',
      vector,
      ...(hasErrorCode ? { errorCode: slot(0) } : {}),
      faultRip: slot(first),
      faultCs: Number(slot(first + 1)),
      cr2: getSreg(sregs, 'cr2'),
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread?.stop();
    native.munmap(this.mapping.address, TINY_LAYOUT.ramBytes);
    for (const fd of [this.vcpuFd, this.memFd, this.vmFd, this.kvmFd]) closeQuietly(fd);
  }
}

/** A flat 64-bit code or data segment descriptor (base 0, limit 4 GiB; L for code, D/B for data). */
function codeOrDataDescriptor({ code, dpl }: { code: boolean; dpl: number }): bigint {
  const type = code ? 0xan /* execute/read */ : 0x2n /* read/write */;
  const access = (1n << 7n) /* present */ | (BigInt(dpl) << 5n) | (1n << 4n) /* code/data */ | type;
  const flags = code ? 0xan /* G, L */ : 0xcn /* G, D/B */;
  return 0xffffn | (access << 40n) | (0xfn << 48n) | (flags << 52n);
}


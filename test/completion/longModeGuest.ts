/**
 * A tiny 64-bit guest for the instruction-completion tests: one vCPU put straight into
 * long mode through KVM_SET_SREGS (no boot code), 2 MiB of RAM mapped with 4 KiB pages so
 * tests get an unmapped page, a read-only page and user pages, a GDT with ring-0 and
 * ring-3 segments and a TSS, and an IDT whose handlers report their vector with
 * `out PORT_VECTOR, al` and then `iretq` (#BP) or `hlt` (faults).
 *
 * The test drives the vCPU thread: internal errors go to the completer under test, port
 * writes and halts are recorded, and each stop can be inspected (registers, stack frame).
 */
import * as fs from 'fs';
import { KvmNative, MappedMemory, VcpuThread, KVM_RUN_IO } from '../../src/native/kvm';
import { GuestMemory } from '../../src/hypervisor/guest-memory';
import { InstructionCompleter } from '../../src/hypervisor/x86/insn-completer';
import { Segment, getReg, setDtable, setSegment, setSregs } from '../../src/hypervisor/x86/kvm-structs';
import { EXIT } from '../../src/hypervisor/x86/kvm-run';

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const native = require('../../native/build/Release/baton_native.node') as KvmNative;

/** Guest-physical layout (identity-mapped: linear == physical). */
export const LAYOUT = {
  pml4: 0x1000, pdpt: 0x2000, pd: 0x3000, pt: 0x4000,
  gdt: 0x5000, idt: 0x6000, tss: 0x7000, handlers: 0x8000,
  /** Ring-0 stack page; its top is the TSS RSP0 and the ring-0 start RSP. */
  stack: 0xa000, stackTop: 0xb000,
  /** Supervisor read/write scratch page. */
  scratch: 0xc000,
  /** Supervisor read-only page (CR0.WP is set, so ring-0 stores fault). */
  readOnly: 0xd000,
  /** Not present in the page tables. */
  unmapped: 0xe000,
  /** User read/write page. */
  userData: 0xf000,
  /** Ring-0 code starts here. */
  code: 0x10000,
  /** Ring-3 code starts here (user page). */
  userCode: 0x11000,
  userStackTop: 0x13000,
  ramBytes: 0x200000,
} as const;

export const SELECTOR = { code0: 0x08, data0: 0x10, data3: 0x1b, code3: 0x23, tss: 0x28 } as const;
/** The port the IDT handlers write their vector to; tests may use others for markers. */
export const PORT_VECTOR = 0xe0;
export const PORT_MARK = 0xe1;

const PTE_P = 1n, PTE_RW = 2n, PTE_US = 4n;
export const CR0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
export const CR4 = 0x620; // OSXMMEXCPT | OSFXSR | PAE
const EFER = 0xd00; // NXE | LMA | LME
const VECTORS_WITH_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17]);

export type GuestEvent =
  | { kind: 'out'; port: number; value: number; rsp: bigint; rip: bigint; rflags: bigint }
  | { kind: 'hlt' }
  | { kind: 'declined'; reason: string; rip: string; bytes: string }
  | { kind: 'shutdown' }
  | { kind: 'exit'; reason: number };

export interface LongModeGuestOptions {
  /** Ring-0 code at LAYOUT.code. */
  code?: number[];
  /** Ring-3 code at LAYOUT.userCode. */
  userCode?: number[];
  /** Start at CPL 3 in userCode instead of CPL 0 in code. */
  startInUser?: boolean;
  /** IDT limit (default: all 256 gates). */
  idtLimit?: number;
  /** Initial CR0 / CR4 / RFLAGS instead of the defaults (paging, protected mode, OSFXSR). */
  cr0?: number;
  cr4?: number;
  rflags?: number;
}

export class LongModeGuest {
  readonly ram: Uint8Array;
  readonly memory: GuestMemory;
  readonly events: GuestEvent[] = [];
  private readonly fds: number[] = [];
  private readonly mapping: MappedMemory;
  private thread?: VcpuThread;
  readonly vcpuFd: number;
  private readonly mmapSize: number;
  private done?: () => void;
  /** The exit handler of the current `run` (the vCPU thread is started once). */
  private onExit?: (reason: number) => void;

  constructor(readonly options: LongModeGuestOptions) {
    const kvmFd = native.kvmOpen();
    this.fds.push(kvmFd);
    const vmFd = native.kvmCreateVm(kvmFd);
    this.fds.push(vmFd);
    native.kvmSetTssAddr(vmFd, 0xfffbd000);
    const memFd = native.memfdCreate('baton-completion-test');
    this.fds.push(memFd);
    native.ftruncate(memFd, LAYOUT.ramBytes);
    this.mapping = native.mmapShared(memFd, LAYOUT.ramBytes);
    this.ram = new Uint8Array(this.mapping.buffer);
    this.memory = new GuestMemory([{ gpa: 0, size: LAYOUT.ramBytes, fdOffset: 0, bytes: this.ram, hostAddress: this.mapping.address }]);
    native.kvmSetUserMemoryRegion(vmFd, { slot: 0, guestPhysAddr: 0, memorySize: LAYOUT.ramBytes, userspaceAddr: this.mapping.address });
    this.vcpuFd = native.kvmCreateVcpu(vmFd, 0);
    this.fds.push(this.vcpuFd);
    this.mmapSize = native.kvmGetVcpuMmapSize(kvmFd);
    native.kvmSetCpuid2(this.vcpuFd, native.kvmGetSupportedCpuid(kvmFd));
    this.writeTables();
    this.ram.set(options.code ?? [0xf4], LAYOUT.code);
    this.ram.set(options.userCode ?? [0xf4], LAYOUT.userCode);
    this.setInitialState();
  }

  private view(gpa: number, len: number): DataView {
    return this.memory.view(gpa, len);
  }

  private writeTables(): void {
    const { pml4, pdpt, pd, pt } = LAYOUT;
    this.view(pml4, 8).setBigUint64(0, BigInt(pdpt) | PTE_P | PTE_RW | PTE_US, true);
    this.view(pdpt, 8).setBigUint64(0, BigInt(pd) | PTE_P | PTE_RW | PTE_US, true);
    this.view(pd, 8).setBigUint64(0, BigInt(pt) | PTE_P | PTE_RW | PTE_US, true);
    const userPages = new Set([LAYOUT.userData, LAYOUT.userCode, LAYOUT.userCode + 0x1000, LAYOUT.userStackTop - 0x1000]);
    for (let page = 0; page < 512; page++) {
      const addr = page * 0x1000;
      if (addr === LAYOUT.unmapped) continue;
      let pte = BigInt(addr) | PTE_P;
      if (addr !== LAYOUT.readOnly) pte |= PTE_RW;
      if (userPages.has(addr)) pte |= PTE_US;
      this.view(pt + page * 8, 8).setBigUint64(0, pte, true);
    }
    const gdt = this.view(LAYOUT.gdt, 0x40);
    gdt.setBigUint64(0x08, 0x00af9a000000ffffn, true); // 64-bit code, DPL 0
    gdt.setBigUint64(0x10, 0x00cf92000000ffffn, true); // data, DPL 0
    gdt.setBigUint64(0x18, 0x00cff2000000ffffn, true); // data, DPL 3
    gdt.setBigUint64(0x20, 0x00affa000000ffffn, true); // 64-bit code, DPL 3
    // 64-bit TSS descriptor (16 bytes): limit 0x67, base LAYOUT.tss, type 9 (available), present.
    gdt.setBigUint64(0x28, 0x67n | (BigInt(LAYOUT.tss) << 16n) | (0x89n << 40n), true);
    gdt.setBigUint64(0x30, 0n, true);
    this.view(LAYOUT.tss + 4, 8).setBigUint64(0, BigInt(LAYOUT.stackTop), true); // RSP0
    const idt = this.view(LAYOUT.idt, 256 * 16);
    for (let vector = 0; vector < 32; vector++) {
      const handler = LAYOUT.handlers + vector * 16;
      // mov al, vector; out PORT_VECTOR, al; then iretq for #BP (a trap) or hlt for faults.
      const tail = vector === 3 ? [0x48, 0xcf] : [0xf4];
      // A fault with an error code leaves it on the stack; the test reads it at the `out`.
      this.ram.set([0xb0, vector, 0xe6, PORT_VECTOR, ...tail], handler);
      const low = BigInt(handler & 0xffff) | (BigInt(SELECTOR.code0) << 16n) | (0x8en << 40n) | (BigInt((handler >>> 16) & 0xffff) << 48n);
      idt.setBigUint64(vector * 16, low, true);
      idt.setBigUint64(vector * 16 + 8, 0n, true);
    }
  }

  private setInitialState(): void {
    const sregs = native.kvmGetSregs(this.vcpuFd);
    const user = this.options.startInUser === true;
    const code: Segment = { base: 0, limit: 0xffffffff, selector: user ? SELECTOR.code3 : SELECTOR.code0, type: 11, present: 1, dpl: user ? 3 : 0, db: 0, s: 1, l: 1, g: 1 };
    const data: Segment = { base: 0, limit: 0xffffffff, selector: user ? SELECTOR.data3 : SELECTOR.data0, type: 3, present: 1, dpl: user ? 3 : 0, db: 1, s: 1, l: 0, g: 1 };
    setSegment(sregs, 'cs', code);
    for (const s of ['ds', 'es', 'fs', 'gs', 'ss'] as const) setSegment(sregs, s, data);
    setSegment(sregs, 'tr', { base: LAYOUT.tss, limit: 0x67, selector: SELECTOR.tss, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 });
    setSegment(sregs, 'ldt', { base: 0, limit: 0xffff, selector: 0, type: 2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 });
    setDtable(sregs, 'gdt', LAYOUT.gdt, 0x37);
    setDtable(sregs, 'idt', LAYOUT.idt, this.options.idtLimit ?? 256 * 16 - 1);
    setSregs(sregs, { cr0: this.options.cr0 ?? CR0, cr3: LAYOUT.pml4, cr4: this.options.cr4 ?? CR4, efer: EFER });
    native.kvmSetSregs(this.vcpuFd, sregs);
    const regs = Buffer.alloc(native.structSizes.regs);
    regs.writeBigUInt64LE(BigInt(user ? LAYOUT.userCode : LAYOUT.code), 128); // rip
    regs.writeBigUInt64LE(BigInt(this.options.rflags ?? 2), 136); // rflags
    regs.writeBigUInt64LE(BigInt(user ? LAYOUT.userStackTop : LAYOUT.stackTop), 48); // rsp
    native.kvmSetRegs(this.vcpuFd, regs);
    const fpu = Buffer.alloc(native.structSizes.fpu);
    fpu.writeUInt16LE(0x37f, 128);
    fpu.writeUInt32LE(0x1f80, 408);
    native.kvmSetFpu(this.vcpuFd, fpu);
  }

  /**
   * Runs until the guest halts, shuts down, the completer declines, `stopAfter` events, or
   * the timeout. Every internal error goes to `completer`.
   */
  run(completer: InstructionCompleter, opts: { stopAfter?: number; timeoutMs?: number; onOut?: (e: GuestEvent) => void } = {}): Promise<GuestEvent[]> {
    const start = this.events.length;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.done = undefined;
        this.thread?.kick();
        reject(new Error(`guest did not finish within ${opts.timeoutMs ?? 20000} ms; events: ${JSON.stringify(this.events.slice(start), bigintJson)}`));
      }, opts.timeoutMs ?? 20000);
      this.done = () => { clearTimeout(timer); this.done = undefined; resolve(this.events.slice(start)); };
      const finish = (e: GuestEvent) => {
        this.events.push(e);
        if (e.kind !== 'out' || (opts.stopAfter !== undefined && this.events.length - start >= opts.stopAfter)) {
          this.done?.();
          return true;
        }
        return false;
      };
      const onExit = (reason: number): void => {
        if (!this.done) return;
        if (reason === EXIT.INTERNAL_ERROR) {
          if (completer.complete({ id: 0, fd: this.vcpuFd })) { this.thread!.resume(); return; }
          const d = completer.lastDecline!;
          finish({ kind: 'declined', reason: d.reason, rip: d.rip, bytes: d.instructionBytes });
          return;
        }
        if (reason === EXIT.IO) {
          const run = new DataView(this.thread!.run);
          const dataOffset = Number(run.getBigUint64(KVM_RUN_IO.dataOffset, true));
          const regs = native.kvmGetRegs(this.vcpuFd);
          const e: GuestEvent = { kind: 'out', port: run.getUint16(KVM_RUN_IO.port, true), value: run.getUint8(dataOffset), rsp: getReg(regs, 'rsp'), rip: getReg(regs, 'rip'), rflags: getReg(regs, 'rflags') };
          opts.onOut?.(e);
          if (!finish(e)) this.thread!.resume();
          return;
        }
        if (reason === EXIT.HLT) { finish({ kind: 'hlt' }); return; }
        if (reason === EXIT.SHUTDOWN) { finish({ kind: 'shutdown' }); return; }
        finish({ kind: 'exit', reason });
      };
      this.onExit = onExit;
      this.thread ??= native.vcpuThreadStart(this.vcpuFd, this.mmapSize, (reason) => this.onExit?.(reason));
      this.thread.resume();
    });
  }

  /** The exception frame at `rsp` (after the error code, if the vector pushes one). */
  frameAt(rsp: bigint, vector: number): { errorCode?: bigint; rip: bigint; cs: bigint; rflags: bigint; rsp: bigint; ss: bigint } {
    const hasError = VECTORS_WITH_ERROR_CODE.has(vector);
    const v = this.view(Number(rsp), 48);
    const q = (i: number) => v.getBigUint64(i * 8, true);
    const o = hasError ? 1 : 0;
    return { ...(hasError ? { errorCode: q(0) } : {}), rip: q(o), cs: q(o + 1), rflags: q(o + 2), rsp: q(o + 3), ss: q(o + 4) };
  }

  close(): void {
    this.thread?.stop();
    native.munmap(this.mapping.address, LAYOUT.ramBytes);
    for (const fd of this.fds.reverse()) fs.closeSync(fd);
  }
}

export function bigintJson(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? '0x' + v.toString(16) : v;
}

/** true when /dev/kvm can be opened; tests print why they skip otherwise. */
export function kvmAvailable(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    console.warn('skipped: /dev/kvm is not available to this user');
    return false;
  }
}

/**
 * The CPU state each boot path expects on entry, as single-purpose functions:
 * PVH enters in 32-bit protected mode with paging off and %ebx -> hvm_start_info;
 * the Linux 64-bit boot protocol enters in long mode on identity-mapped page tables with
 * %rsi -> boot_params. Both get the same boot GDT (selectors 0x10 code, 0x18 data, 0x20 TSS).
 */
import { GuestMemory } from '../guest-memory';
import { BOOT_GDT_ADDR, BOOT_IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR } from '../layout';
import {
  CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, Segment, setDtable, setRegs, setSegment, setSregs,
} from './kvm-structs';

export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

const GDT_ENTRIES = [
  0n, // null
  0n, // unused (Linux reserves 0x08)
  0x00cf9b000000ffffn, // 0x10: flat code (the L bit is set per mode below)
  0x00cf93000000ffffn, // 0x18: flat data
  0x008b00000000ffffn, // 0x20: TSS (busy), what VMX wants in TR
];
const LONG_MODE_BIT = 1n << 53n;
const DEFAULT_BIG_BIT = 1n << 54n;

export function writeBootGdt(mem: GuestMemory, longMode: boolean): void {
  const v = mem.view(BOOT_GDT_ADDR, GDT_ENTRIES.length * 8);
  GDT_ENTRIES.forEach((e, i) => {
    const entry = i === 2 && longMode ? (e | LONG_MODE_BIT) & ~DEFAULT_BIG_BIT : e;
    v.setBigUint64(i * 8, entry, true);
  });
  mem.fill(BOOT_IDT_ADDR, 8);
}

const flatData: Segment = { base: 0, limit: 0xffffffff, selector: BOOT_DS, type: 3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1 };
const tss: Segment = { base: 0, limit: 0xffff, selector: BOOT_TSS, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 };
const ldt: Segment = { base: 0, limit: 0xffff, selector: 0, type: 2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0 };

function setFlatSegments(sregs: Buffer, code: Segment): void {
  setSegment(sregs, 'cs', code);
  for (const s of ['ds', 'es', 'fs', 'gs', 'ss'] as const) setSegment(sregs, s, flatData);
  setSegment(sregs, 'tr', tss);
  setSegment(sregs, 'ldt', ldt);
  setDtable(sregs, 'gdt', BOOT_GDT_ADDR, GDT_ENTRIES.length * 8 - 1);
  setDtable(sregs, 'idt', BOOT_IDT_ADDR, 7);
}

/** PVH: 32-bit protected mode, paging off. */
export function setupPvhSregs(sregs: Buffer): void {
  setFlatSegments(sregs, { base: 0, limit: 0xffffffff, selector: BOOT_CS, type: 11, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1 });
  setSregs(sregs, { cr0: CR0_PE | CR0_ET, cr3: 0, cr4: 0, efer: 0 });
}

export function setupPvhRegs(regs: Buffer, entry: number, startInfoAddr: number): void {
  regs.fill(0);
  setRegs(regs, { rip: entry, rbx: startInfoAddr, rflags: 0x2 });
}

/** Identity map of the first 4 GiB with 2 MiB pages, enough for the kernel, boot_params, cmdline and initrd. */
export function writeIdentityPageTables(mem: GuestMemory): void {
  const PRESENT_RW = 0x3n;
  const PAGE_SIZE_2M = 0x80n;
  mem.fill(PML4_ADDR, 0x1000);
  mem.fill(PDPT_ADDR, 0x1000);
  mem.view(PML4_ADDR, 8).setBigUint64(0, BigInt(PDPT_ADDR) | PRESENT_RW, true);
  for (let gib = 0; gib < 4; gib++) {
    const pd = PD_ADDR + gib * 0x1000;
    mem.view(PDPT_ADDR + gib * 8, 8).setBigUint64(0, BigInt(pd) | PRESENT_RW, true);
    const v = mem.view(pd, 0x1000);
    for (let i = 0; i < 512; i++) {
      v.setBigUint64(i * 8, (BigInt(gib * 512 + i) << 21n) | PRESENT_RW | PAGE_SIZE_2M, true);
    }
  }
}

/** Linux 64-bit boot protocol: long mode, paging on, flat segments. */
export function setupLongModeSregs(sregs: Buffer): void {
  setFlatSegments(sregs, { base: 0, limit: 0xffffffff, selector: BOOT_CS, type: 11, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1 });
  // `>>> 0`: a JS `|` yields a signed 32-bit value, and CR0.PG (bit 31) would then reach
  // the 64-bit CR0 sign-extended (0xffffffff80000011), which KVM_SET_SREGS refuses.
  setSregs(sregs, { cr0: (CR0_PE | CR0_ET | CR0_PG) >>> 0, cr3: PML4_ADDR, cr4: CR4_PAE, efer: EFER_LME | EFER_LMA });
}

export function setupLinux64Regs(regs: Buffer, entry: number, zeroPageAddr: number, stackTop: number): void {
  regs.fill(0);
  setRegs(regs, { rip: entry, rsi: zeroPageAddr, rsp: stackTop, rbp: stackTop, rflags: 0x2 });
}

/** kvm_fpu: x87 control word and MXCSR at their reset values. */
export const KVM_FPU_FCW_OFFSET = 128;
export const KVM_FPU_MXCSR_OFFSET = 408;
export function setupFpu(fpu: Buffer): void {
  fpu.fill(0);
  fpu.writeUInt16LE(0x37f, KVM_FPU_FCW_OFFSET);
  fpu.writeUInt32LE(0x1f80, KVM_FPU_MXCSR_OFFSET);
}

/** Local APIC LVT: LINT0 = ExtINT (the 8259), LINT1 = NMI, as a PC's BIOS leaves them. */
const APIC_LVT_LINT0 = 0x350;
const APIC_LVT_LINT1 = 0x360;
const APIC_MODE_EXTINT = 0x7;
const APIC_MODE_NMI = 0x4;
export function setupLint(lapic: Buffer): void {
  const set = (reg: number, mode: number) => {
    const old = lapic.readUInt32LE(reg);
    lapic.writeUInt32LE(((old & ~0x700) | (mode << 8)) >>> 0, reg);
  };
  set(APIC_LVT_LINT0, APIC_MODE_EXTINT);
  set(APIC_LVT_LINT1, APIC_MODE_NMI);
}

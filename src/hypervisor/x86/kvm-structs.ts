/**
 * kvm_regs and kvm_sregs (linux/arch/x86/include/uapi/asm/kvm.h) as named fields. The
 * native addon hands these structs over as raw Buffers; boot set-up and the instruction
 * completer edit them here.
 */
import * as K from '../../native/kvm';
import { Struct, f, viewOf } from '../../util/struct';

const GPR_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
export type RegName = (typeof GPR_NAMES)[number];

// Offsets come from src/native/kvm.ts (checked there against the C headers' offsetof).
export const KVM_REGS = new Struct('kvm_regs', 144,
  Object.fromEntries(GPR_NAMES.map((n) => [n, f(K.KVM_REGS[n], 'u64')])) as Record<RegName, ReturnType<typeof f>>);

const S = K.KVM_SEGMENT;
export const KVM_SEGMENT = new Struct('kvm_segment', S.size, {
  base: f(S.base, 'u64'), limit: f(S.limit, 'u32'), selector: f(S.selector, 'u16'), type: f(S.type, 'u8'),
  present: f(S.present, 'u8'), dpl: f(S.dpl, 'u8'), db: f(S.db, 'u8'), s: f(S.s, 'u8'), l: f(S.l, 'u8'),
  g: f(S.g, 'u8'), avl: f(S.avl, 'u8'), unusable: f(S.unusable, 'u8'),
});

export const KVM_DTABLE = new Struct('kvm_dtable', K.KVM_DTABLE.size, { base: f(K.KVM_DTABLE.base, 'u64'), limit: f(K.KVM_DTABLE.limit, 'u16') });

export type SegmentName = 'cs' | 'ds' | 'es' | 'fs' | 'gs' | 'ss' | 'tr' | 'ldt';
export const SREGS_SEGMENT_OFFSET: Record<SegmentName, number> = K.KVM_SREGS;
export const SREGS_GDT_OFFSET = K.KVM_SREGS.gdt;
export const SREGS_IDT_OFFSET = K.KVM_SREGS.idt;

const R = K.KVM_SREGS;
export const KVM_SREGS = new Struct('kvm_sregs', 312, {
  cr0: f(R.cr0, 'u64'), cr2: f(R.cr2, 'u64'), cr3: f(R.cr3, 'u64'), cr4: f(R.cr4, 'u64'),
  cr8: f(R.cr8, 'u64'), efer: f(R.efer, 'u64'), apic_base: f(R.apicBase, 'u64'),
});

export interface Segment {
  base: number; limit: number; selector: number; type: number; present: number; dpl: number;
  db: number; s: number; l: number; g: number; avl?: number; unusable?: number;
}

export function setSegment(sregs: Buffer, name: SegmentName, seg: Segment): void {
  const v = viewOf(sregs);
  KVM_SEGMENT.assign(v, SREGS_SEGMENT_OFFSET[name], { avl: 0, unusable: 0, ...seg });
}

export function getSegment(sregs: Buffer, name: SegmentName): Segment {
  const v = viewOf(sregs);
  const b = SREGS_SEGMENT_OFFSET[name];
  const n = (k: keyof typeof KVM_SEGMENT.fields) => KVM_SEGMENT.num(v, b, k);
  return { base: n('base'), limit: n('limit'), selector: n('selector'), type: n('type'), present: n('present'),
    dpl: n('dpl'), db: n('db'), s: n('s'), l: n('l'), g: n('g'), avl: n('avl'), unusable: n('unusable') };
}

export function setDtable(sregs: Buffer, which: 'gdt' | 'idt', base: number, limit: number): void {
  KVM_DTABLE.assign(viewOf(sregs), which === 'gdt' ? SREGS_GDT_OFFSET : SREGS_IDT_OFFSET, { base, limit });
}

/** Reads/writes kvm_regs fields on a raw Buffer. */
export function getReg(regs: Buffer, name: RegName): bigint {
  return KVM_REGS.get(viewOf(regs), 0, name) as bigint;
}
export function setRegs(regs: Buffer, values: Partial<Record<RegName, number | bigint>>): void {
  KVM_REGS.assign(viewOf(regs), 0, values);
}
export function getSreg(sregs: Buffer, name: keyof typeof KVM_SREGS.fields): bigint {
  return KVM_SREGS.get(viewOf(sregs), 0, name) as bigint;
}
export function setSregs(sregs: Buffer, values: Partial<Record<keyof typeof KVM_SREGS.fields, number | bigint>>): void {
  KVM_SREGS.assign(viewOf(sregs), 0, values);
}

/** Control-register and EFER bits used by boot set-up. */
export const CR0_PE = 1 << 0;
export const CR0_ET = 1 << 4;
export const CR0_PG = 0x8000_0000;
export const CR4_PAE = 1 << 5;
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;

/**
 * hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1: what a PVH
 * kernel reads at %ebx on entry — command line, modules (the initrd) and memory map.
 */
import { Struct, f } from '../../util/struct';
import { GuestMemory } from '../guest-memory';
import { E820Entry } from './e820';

export const HVM_START_MAGIC = 0x336ec578;

export const HVM_START_INFO = new Struct('hvm_start_info', 56, {
  magic: f(0, 'u32'), version: f(4, 'u32'), flags: f(8, 'u32'), nr_modules: f(12, 'u32'),
  modlist_paddr: f(16, 'u64'), cmdline_paddr: f(24, 'u64'), rsdp_paddr: f(32, 'u64'),
  memmap_paddr: f(40, 'u64'), memmap_entries: f(48, 'u32'),
});
export const HVM_MODLIST_ENTRY = new Struct('hvm_modlist_entry', 32, {
  paddr: f(0, 'u64'), size: f(8, 'u64'), cmdline_paddr: f(16, 'u64'),
});
export const HVM_MEMMAP_ENTRY = new Struct('hvm_memmap_table_entry', 24, {
  addr: f(0, 'u64'), size: f(8, 'u64'), type: f(16, 'u32'),
});

export interface PvhStartInfo {
  startInfoAddr: number;
  memmapAddr: number;
  modlistAddr: number;
  cmdlineAddr: number;
  e820: E820Entry[];
  initrd?: { addr: number; size: number };
}

export function writePvhStartInfo(mem: GuestMemory, info: PvhStartInfo): void {
  const mm = mem.view(info.memmapAddr, info.e820.length * HVM_MEMMAP_ENTRY.size);
  info.e820.forEach((e, i) => HVM_MEMMAP_ENTRY.assign(mm, i * HVM_MEMMAP_ENTRY.size, e));
  if (info.initrd) {
    HVM_MODLIST_ENTRY.assign(mem.view(info.modlistAddr, HVM_MODLIST_ENTRY.size), 0,
      { paddr: info.initrd.addr, size: info.initrd.size, cmdline_paddr: 0 });
  }
  const si = mem.view(info.startInfoAddr, HVM_START_INFO.size);
  HVM_START_INFO.assign(si, 0, {
    magic: HVM_START_MAGIC, version: 1, flags: 0,
    nr_modules: info.initrd ? 1 : 0, modlist_paddr: info.initrd ? info.modlistAddr : 0,
    cmdline_paddr: info.cmdlineAddr, rsdp_paddr: 0,
    memmap_paddr: info.memmapAddr, memmap_entries: info.e820.length,
  });
}

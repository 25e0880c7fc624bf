/**
 * The guest's physical memory map, given to Linux in boot_params (e820) and to PVH
 * kernels in hvm_start_info's memmap: same entries, two encodings.
 */
import { EBDA_START, HIGH_MEM_START, MMIO_HOLE_START, MMIO_HOLE_END } from '../layout';

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** Guest RAM placement for a memory size: below the PCI hole, then above 4 GiB. */
export function ramRanges(memBytes: number): { gpa: number; size: number; fdOffset: number }[] {
  const low = Math.min(memBytes, MMIO_HOLE_START);
  const ranges = [{ gpa: 0, size: low, fdOffset: 0 }];
  if (memBytes > low) ranges.push({ gpa: MMIO_HOLE_END, size: memBytes - low, fdOffset: low });
  return ranges;
}

export function e820Map(memBytes: number): E820Entry[] {
  const entries: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    // EBDA (MP table) and the BIOS area are reserved so the kernel leaves them alone.
    { addr: EBDA_START, size: 0xa0000 - EBDA_START, type: E820_RESERVED },
    { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
  ];
  for (const r of ramRanges(memBytes)) {
    const start = Math.max(r.gpa, HIGH_MEM_START);
    const end = r.gpa + r.size;
    if (end > start) entries.push({ addr: start, size: end - start, type: E820_RAM });
  }
  return entries;
}

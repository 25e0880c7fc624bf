/**
 * Linux x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header inside a
 * bzImage and the boot_params "zero page" we fill for the 64-bit entry point. The image
 * is untrusted input: sizes and versions are checked before anything is copied.
 */
import { BatonError } from '../../util/errors';
import { Struct, f } from '../../util/struct';
import { GuestMemory } from '../guest-memory';
import { E820Entry } from './e820';

/** Offsets are within boot_params; the setup header starts at 0x1f1 in both the file and boot_params. */
export const BOOT_PARAMS = new Struct('boot_params', 4096, {
  ext_ramdisk_image: f(0x0c0, 'u32'), ext_ramdisk_size: f(0x0c4, 'u32'), ext_cmd_line_ptr: f(0x0c8, 'u32'),
  e820_entries: f(0x1e8, 'u8'),
  setup_sects: f(0x1f1, 'u8'), syssize: f(0x1f4, 'u32'), vid_mode: f(0x1fa, 'u16'), boot_flag: f(0x1fe, 'u16'),
  header: f(0x202, 'u32'), version: f(0x206, 'u16'),
  type_of_loader: f(0x210, 'u8'), loadflags: f(0x211, 'u8'), code32_start: f(0x214, 'u32'),
  ramdisk_image: f(0x218, 'u32'), ramdisk_size: f(0x21c, 'u32'), heap_end_ptr: f(0x224, 'u16'),
  cmd_line_ptr: f(0x228, 'u32'), initrd_addr_max: f(0x22c, 'u32'), kernel_alignment: f(0x230, 'u32'),
  relocatable_kernel: f(0x234, 'u8'), xloadflags: f(0x236, 'u16'), cmdline_size: f(0x238, 'u32'),
  pref_address: f(0x258, 'u64'), init_size: f(0x260, 'u32'),
});
export const E820_TABLE_OFFSET = 0x2d0;
export const E820_MAX_ENTRIES = 128;
const E820_ENTRY = new Struct('boot_e820_entry', 20, { addr: f(0, 'u64'), size: f(8, 'u64'), type: f(16, 'u32') });

const HDRS_MAGIC = 0x53726448; // "HdrS"
const XLF_KERNEL_64 = 1 << 0;
const LOADFLAG_LOADED_HIGH = 1 << 0;
const LOADFLAG_CAN_USE_HEAP = 1 << 7;
/** type_of_loader 0xff: "undefined" boot loader, what QEMU/Firecracker-style direct loaders use. */
const LOADER_TYPE_UNDEFINED = 0xff;

export interface BzImageInfo {
  setupSize: number;
  protocolVersion: number;
  initrdAddrMax: number;
  cmdlineSize: number;
  /** The protected-mode kernel (what gets loaded at 1 MiB). */
  kernel: Buffer;
  /** The setup header bytes 0x1f1..end of header, copied into boot_params. */
  header: Buffer;
}

export function isBzImage(img: Buffer): boolean {
  return img.length > 0x264 && img.readUInt32LE(0x202) === HDRS_MAGIC;
}

export function parseBzImage(img: Buffer, path: string): BzImageInfo {
  const bad = (why: string) => new BatonError('EKERNEL', `kernel ${path} is not a usable bzImage: ${why}`, { path });
  if (!isBzImage(img)) throw bad('no "HdrS" boot-protocol magic at 0x202');
  const version = img.readUInt16LE(0x206);
  if (version < 0x20c) throw bad(`boot protocol ${version >> 8}.${version & 0xff} is older than 2.12 (needed for 64-bit entry)`);
  if ((img.readUInt16LE(0x236) & XLF_KERNEL_64) === 0) throw bad('header does not offer a 64-bit entry point (XLF_KERNEL_64)');
  const setupSects = img[0x1f1] || 4;
  const setupSize = (setupSects + 1) * 512;
  if (setupSize >= img.length) throw bad('setup size exceeds the file');
  const headerEnd = 0x202 + img[0x201]; // byte 0x201 is the header length after the jump
  return {
    setupSize, protocolVersion: version,
    initrdAddrMax: img.readUInt32LE(0x22c), cmdlineSize: img.readUInt32LE(0x238),
    kernel: img.subarray(setupSize), header: img.subarray(0x1f1, Math.min(headerEnd, 0x290)),
  };
}

export interface BootParamsInput {
  zeroPageAddr: number;
  cmdlineAddr: number;
  initrd?: { addr: number; size: number };
  e820: E820Entry[];
}

export function writeBootParams(mem: GuestMemory, bz: BzImageInfo, input: BootParamsInput): void {
  if (input.e820.length > E820_MAX_ENTRIES) throw new BatonError('EBOOT', `too many e820 entries (${input.e820.length})`);
  const zp = mem.slice(input.zeroPageAddr, BOOT_PARAMS.size);
  zp.fill(0);
  zp.set(bz.header, 0x1f1);
  const v = mem.view(input.zeroPageAddr, BOOT_PARAMS.size);
  const loadflags = BOOT_PARAMS.num(v, 0, 'loadflags') | LOADFLAG_LOADED_HIGH | LOADFLAG_CAN_USE_HEAP;
  BOOT_PARAMS.assign(v, 0, {
    vid_mode: 0xffff, type_of_loader: LOADER_TYPE_UNDEFINED, loadflags,
    heap_end_ptr: 0xfe00, cmd_line_ptr: input.cmdlineAddr, ext_cmd_line_ptr: 0,
    ramdisk_image: input.initrd?.addr ?? 0, ramdisk_size: input.initrd?.size ?? 0,
    e820_entries: input.e820.length,
  });
  input.e820.forEach((e, i) => E820_ENTRY.assign(v, E820_TABLE_OFFSET + i * E820_ENTRY.size, e));
}

/**
 * ELF kernel loading with the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): how QEMU and
 * Firecracker boot an uncompressed vmlinux, and how our test guest boots. The file is
 * untrusted input: every offset is checked against the file and against guest RAM.
 */
import { BatonError } from '../../util/errors';
import { GuestMemory } from '../guest-memory';

const ELF_MAGIC = 0x464c457f; // "\x7fELF" little-endian
const PT_LOAD = 1;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export interface LoadedElf {
  /** 32-bit protected-mode entry from the PVH note. */
  pvhEntry: number;
  /** Highest guest-physical byte the image occupies (exclusive). */
  end: number;
  start: number;
}

function bad(path: string, why: string): BatonError {
  return new BatonError('EKERNEL', `kernel ${path} is not a bootable PVH ELF: ${why}`, { path });
}

interface ProgramHeader { type: number; offset: number; paddr: number; filesz: number; memsz: number }

function programHeaders(img: Buffer, path: string): ProgramHeader[] {
  const is64 = img[4] === 2;
  if (img[4] !== 1 && img[4] !== 2) throw bad(path, 'unknown ELF class');
  if (img[5] !== 1) throw bad(path, 'not little-endian');
  const phoff = is64 ? Number(img.readBigUInt64LE(32)) : img.readUInt32LE(28);
  const phentsize = img.readUInt16LE(is64 ? 54 : 42);
  const phnum = img.readUInt16LE(is64 ? 56 : 44);
  if (phentsize < (is64 ? 56 : 32) || phoff + phnum * phentsize > img.length) throw bad(path, 'program headers outside the file');
  const out: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    out.push(is64
      ? { type: img.readUInt32LE(p), offset: Number(img.readBigUInt64LE(p + 8)), paddr: Number(img.readBigUInt64LE(p + 24)),
        filesz: Number(img.readBigUInt64LE(p + 32)), memsz: Number(img.readBigUInt64LE(p + 40)) }
      : { type: img.readUInt32LE(p), offset: img.readUInt32LE(p + 4), paddr: img.readUInt32LE(p + 12),
        filesz: img.readUInt32LE(p + 16), memsz: img.readUInt32LE(p + 20) });
  }
  return out;
}

/** Finds the PVH entry in the PT_NOTE segments, or undefined. */
export function findPvhEntry(img: Buffer, path = 'image'): number | undefined {
  for (const ph of programHeaders(img, path)) {
    if (ph.type !== PT_NOTE) continue;
    if (ph.offset + ph.filesz > img.length) throw bad(path, 'note segment outside the file');
    let p = ph.offset;
    const end = ph.offset + ph.filesz;
    while (p + 12 <= end) {
      const namesz = img.readUInt32LE(p);
      const descsz = img.readUInt32LE(p + 4);
      const type = img.readUInt32LE(p + 8);
      const nameAt = p + 12;
      const descAt = nameAt + ((namesz + 3) & ~3);
      const next = descAt + ((descsz + 3) & ~3);
      if (next > end) break;
      const name = img.toString('latin1', nameAt, nameAt + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) {
        if (descsz === 4) return img.readUInt32LE(descAt);
        if (descsz === 8) return Number(img.readBigUInt64LE(descAt));
        throw bad(path, `PVH note has descriptor size ${descsz}`);
      }
      p = next;
    }
  }
  return undefined;
}

export function isElf(img: Buffer): boolean {
  return img.length >= 64 && img.readUInt32LE(0) === ELF_MAGIC;
}

/** Copies the PT_LOAD segments to their physical addresses and returns the PVH entry. */
export function loadPvhElf(img: Buffer, mem: GuestMemory, path: string): LoadedElf {
  if (!isElf(img)) throw bad(path, 'no ELF magic');
  const pvhEntry = findPvhEntry(img, path);
  if (pvhEntry === undefined) throw bad(path, 'no XEN_ELFNOTE_PHYS32_ENTRY note (build it with PVH support)');
  let start = Infinity;
  let end = 0;
  for (const ph of programHeaders(img, path)) {
    if (ph.type !== PT_LOAD || ph.memsz === 0) continue;
    if (ph.offset + ph.filesz > img.length || ph.filesz > ph.memsz) throw bad(path, 'load segment outside the file');
    try {
      mem.write(ph.paddr, img.subarray(ph.offset, ph.offset + ph.filesz));
      mem.fill(ph.paddr + ph.filesz, ph.memsz - ph.filesz);
    } catch {
      throw bad(path, `segment at 0x${ph.paddr.toString(16)} (+${ph.memsz}) does not fit in guest RAM`);
    }
    start = Math.min(start, ph.paddr);
    end = Math.max(end, ph.paddr + ph.memsz);
  }
  if (end === 0) throw bad(path, 'no loadable segments');
  return { pvhEntry, start, end };
}

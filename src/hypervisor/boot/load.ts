/**
 * Puts a bootable image in guest RAM: kernel (PVH ELF or bzImage), initrd, command line,
 * memory map and MP table; returns how to set up the boot vCPU. Missing or unbootable
 * files are refused with the path and the reason.
 */
import fs from 'node:fs';
import { BatonError } from '../../util/errors';
import { GuestMemory } from '../guest-memory';
import {
  BOOT_STACK_TOP, CMDLINE_ADDR, CMDLINE_MAX, HIGH_MEM_START, INITRD_ADDR_MAX, MMIO_HOLE_START, MPTABLE_ADDR,
  MiB, PVH_MEMMAP_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR,
} from '../layout';
import { MachineConfig } from '../machine-config';
import {
  setupLinux64Regs, setupLongModeSregs, setupPvhRegs, setupPvhSregs, writeBootGdt, writeIdentityPageTables,
} from '../x86/boot-regs';
import { parseBzImage, isBzImage, writeBootParams } from './bzimage';
import { e820Map } from './e820';
import { isElf, loadPvhElf } from './elf';
import { PciIrqRoute, writeMptable } from './mptable';
import { writePvhStartInfo } from './pvh';

export const PVH_MODLIST_ADDR = 0x6200;
/** The 64-bit entry point sits 0x200 bytes into the protected-mode kernel. */
const LINUX_64BIT_ENTRY_OFFSET = 0x200;
const PAGE = 4096;

export interface BootPlan {
  description: string;
  setupBsp(regs: Buffer, sregs: Buffer): void;
}

function readFileOrFail(path: string, what: string): Buffer {
  try {
    return fs.readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BatonError('EKERNEL', `cannot read ${what} ${path} (${code}): check the path in the domain definition`, { path });
  }
}

/** Places the initrd page-aligned as high as allowed, below `maxAddr` and above `minAddr`. */
function placeInitrd(mem: GuestMemory, initrd: Buffer, minAddr: number, maxAddr: number, path: string): { addr: number; size: number } {
  const lowRamEnd = Math.min(mem.regions[0].size, MMIO_HOLE_START);
  const top = Math.min(lowRamEnd, maxAddr + 1);
  const addr = Math.floor((top - initrd.length) / PAGE) * PAGE;
  if (addr < minAddr) {
    throw new BatonError('EINITRD', `initrd ${path} (${Math.ceil(initrd.length / MiB)} MiB) does not fit in guest RAM above the kernel: give the domain more memory`, { path });
  }
  mem.write(addr, initrd);
  return { addr, size: initrd.length };
}

function writeCmdline(mem: GuestMemory, cmdline: string, maxLen: number): number {
  const bytes = Buffer.from(cmdline + '\0', 'utf8');
  if (bytes.length > Math.min(maxLen, CMDLINE_MAX)) {
    throw new BatonError('ECMDLINE', `kernel command line is ${bytes.length - 1} bytes; this kernel accepts at most ${Math.min(maxLen, CMDLINE_MAX) - 1}`);
  }
  mem.write(CMDLINE_ADDR, bytes);
  return bytes.length - 1;
}

export function loadBootImage(mem: GuestMemory, config: MachineConfig, pciRoutes: PciIrqRoute[] = []): BootPlan {
  const kernel = readFileOrFail(config.kernel, 'kernel');
  const initrd = config.initrd ? readFileOrFail(config.initrd, 'initrd') : undefined;
  const memBytes = config.memory.sizeMiB * MiB;
  const e820 = e820Map(memBytes);
  writeMptable(mem, MPTABLE_ADDR, config.vcpus, pciRoutes);

  if (isElf(kernel)) {
    const elf = loadPvhElf(kernel, mem, config.kernel);
    writeCmdline(mem, config.cmdline, CMDLINE_MAX);
    const rd = initrd && placeInitrd(mem, initrd, Math.ceil(elf.end / PAGE) * PAGE, INITRD_ADDR_MAX, config.initrd as string);
    writePvhStartInfo(mem, {
      startInfoAddr: PVH_START_INFO_ADDR, memmapAddr: PVH_MEMMAP_ADDR, modlistAddr: PVH_MODLIST_ADDR,
      cmdlineAddr: CMDLINE_ADDR, e820, initrd: rd || undefined,
    });
    writeBootGdt(mem, false);
    return {
      description: `PVH ELF ${config.kernel}, entry 0x${elf.pvhEntry.toString(16)}` + (rd ? `, initrd at 0x${rd.addr.toString(16)}` : ''),
      setupBsp: (regs, sregs) => { setupPvhSregs(sregs); setupPvhRegs(regs, elf.pvhEntry, PVH_START_INFO_ADDR); },
    };
  }
  if (isBzImage(kernel)) {
    const bz = parseBzImage(kernel, config.kernel);
    try {
      mem.write(HIGH_MEM_START, bz.kernel);
    } catch {
      throw new BatonError('EKERNEL', `kernel ${config.kernel} (${bz.kernel.length} bytes) does not fit in guest RAM`);
    }
    writeCmdline(mem, config.cmdline, (bz.cmdlineSize || 255) + 1);
    const rd = initrd && placeInitrd(mem, initrd, HIGH_MEM_START + bz.kernel.length, bz.initrdAddrMax || INITRD_ADDR_MAX, config.initrd as string);
    writeBootParams(mem, bz, { zeroPageAddr: ZERO_PAGE_ADDR, cmdlineAddr: CMDLINE_ADDR, initrd: rd || undefined, e820 });
    writeBootGdt(mem, true);
    writeIdentityPageTables(mem);
    const entry = HIGH_MEM_START + LINUX_64BIT_ENTRY_OFFSET;
    return {
      description: `bzImage ${config.kernel} (boot protocol ${bz.protocolVersion.toString(16)}), 64-bit entry 0x${entry.toString(16)}`,
      setupBsp: (regs, sregs) => { setupLongModeSregs(sregs); setupLinux64Regs(regs, entry, ZERO_PAGE_ADDR, BOOT_STACK_TOP); },
    };
  }
  throw new BatonError('EKERNEL', `kernel ${config.kernel} is neither an ELF with a PVH note nor a bzImage`, { path: config.kernel });
}

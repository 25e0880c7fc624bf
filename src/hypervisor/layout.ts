/**
 * Every fixed guest-physical address baton-hv uses, in one place. Low memory (below 1 MiB)
 * holds the boot structures; the kernel is loaded where its headers ask (1 MiB for PVH
 * ELFs and bzImages); the initrd goes as high as the kernel allows below the 32-bit hole.
 */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** Real-mode IVT/BDA area kept free, as PCs have it. */
export const LOW_RESERVED_END = 0x1000;

/** GDT for the 32/64-bit entry states we set up ourselves. */
export const BOOT_GDT_ADDR = 0x500;
/** Empty IDT the kernel replaces immediately. */
export const BOOT_IDT_ADDR = 0x520;
/** hvm_start_info for PVH entry, followed by its memory map. */
export const PVH_START_INFO_ADDR = 0x6000;
export const PVH_MEMMAP_ADDR = 0x6040;
/** Linux boot_params ("zero page") for the 64-bit boot protocol. */
export const ZERO_PAGE_ADDR = 0x7000;
/** Boot stack for bzImage entry, grows down from here. */
export const BOOT_STACK_TOP = 0x8ff0;
/** Identity-mapped page tables for 64-bit bzImage entry: PML4, PDPT, then four PDs (first 4 GiB, 2 MiB pages). */
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000; // 0xb000-0xefff
/** Kernel command line (up to CMDLINE_MAX bytes incl. NUL). */
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
/** Start of the EBDA: the MP floating pointer and table live here, where Linux scans. */
export const EBDA_START = 0x9fc00;
export const MPTABLE_ADDR = EBDA_START;
/** Top of conventional memory; 0xA0000-0xFFFFF is the VGA/BIOS hole. */
export const LOW_MEM_END = 0xa0000;
export const HIGH_MEM_START = 0x100000;

/** 32-bit PCI/MMIO hole: RAM above this moves above 4 GiB. */
export const MMIO_HOLE_START = 0xc0000000;
export const MMIO_HOLE_END = 0x1_0000_0000;
/** Where virtio-pci BARs are allocated from (inside the hole, below the IOAPIC). */
export const PCI_MMIO_BASE = 0xc0000000;
export const PCI_MMIO_SIZE = 0x10000000;
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;

/** KVM needs three pages for its TSS and one for the identity map (Intel); below the BIOS. */
export const KVM_TSS_ADDR = 0xfffbd000;
export const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

/** The largest initrd address Linux accepts unless the header says more. */
export const INITRD_ADDR_MAX = 0x37ffffff;

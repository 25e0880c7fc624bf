/*
 * Fixed numbers shared by the assembly entry code and the C code: segment selectors,
 * interrupt vectors, MSRs and the page-table flags. Everything with an address lives in
 * linker.ld or as a symbol; nothing here depends on where the image is loaded.
 */
#ifndef TESTGUEST_LAYOUT_H
#define TESTGUEST_LAYOUT_H

/* GDT selectors */
#define GDT_KERNEL_CS   0x08
#define GDT_KERNEL_DS   0x10
#define GDT_USER_CS     0x18
#define GDT_USER_DS     0x20
#define GDT_TSS         0x28   /* 16-byte system descriptor: two slots */
#define GDT_ENTRIES     7
#define RPL_USER        3

/* Interrupt vectors. 0..31 are CPU exceptions. The 8259s are remapped to 0x20..0x2f and
 * masked, so those vectors can only be spurious. */
#define VECTOR_PIC_BASE       0x20
#define VECTOR_TIMER          0x40
#define VECTOR_APIC_SPURIOUS  0xff

/* MSRs */
#define MSR_APIC_BASE     0x0000001b
#define MSR_TSC_DEADLINE  0x000006e0
#define MSR_EFER          0xc0000080
#define EFER_LME          (1 << 8)

#define CR0_PE            (1 << 0)
#define CR0_PG            (1 << 31)
#define CR4_PAE           (1 << 5)

/* 2 MiB page-directory entries: present, writable, user (ring 3 may touch everything:
 * this guest has no secrets from itself), page size. The top GiB (LAPIC, IOAPIC, PCI
 * BARs) is also cache-disabled. */
#define PTE_PRESENT   0x001
#define PTE_WRITE     0x002
#define PTE_USER      0x004
#define PTE_PWT       0x008
#define PTE_PCD       0x010
#define PTE_LARGE     0x080
#define PTE_TABLE     (PTE_PRESENT | PTE_WRITE | PTE_USER)
#define PTE_RAM_2M    (PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_LARGE)
#define PTE_MMIO_2M   (PTE_RAM_2M | PTE_PWT | PTE_PCD)
#define IDENTITY_MAP_GIB  4    /* 0..4 GiB, the last GiB as MMIO */

#define RING0_STACK_SIZE  16384
#define RING3_STACK_SIZE  65536

/*
 * Ring-0 calls. Ring 3 executes `hlt` with the call number in %rdi and its argument in
 * %rsi; the #GP this raises at CPL 3 is the way in, and iretq past the hlt the way out.
 * Not `syscall`: on this host's KVM (kvm-pvm) `syscall` jumps to LSTAR but stays at CPL 3
 * (%cs reads 0x33, rdmsr there raises #GP); not `int n`: its ring-0 emulator rejects it.
 */
#define RING0_CALL_WAIT_UNTIL_TSC  1   /* sti; hlt until the TSC reaches the argument */
#define RING0_CALL_HALT_FOREVER    2   /* cli; hlt for good */
#define RING0_CALL_TRIPLE_FAULT    3   /* empty IDT, then a fault: the CPU shuts down */
#define RING0_CALL_EMULATION_FAILURE 4 /* an instruction this host's ring-0 emulator rejects: */
#define EMULATION_FAILURE_SSE      0   /*   pxor (no VMM completes it) */
#define EMULATION_FAILURE_INT3     1   /*   int3 (baton-hv completes it) */

#endif

/*
 * PVH entry, the switch to long mode, and the few stubs that must be assembly:
 * exception/interrupt entry points and the drop to ring 3.
 *
 * PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h, as QEMU and Firecracker
 * implement it): 32-bit protected mode, paging off, flat CS/DS/SS, interrupts off,
 * %ebx = guest-physical address of struct hvm_start_info. No stack is provided.
 *
 * The page tables, GDT and stacks are static data, so ring 0 (emulated ~1000x slower on
 * this host) does no loops here at all.
 */
#include "layout.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* The note QEMU and Baton look for to boot us through PVH. QEMU reads the descriptor as
 * a pointer-sized value for ELF64 and aligns the name by the PT_NOTE segment's p_align,
 * so keep this section 4-byte aligned and the descriptor 8 bytes. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f                /* namesz */
	.long 4f - 3f                /* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY
1:	.asciz "Xen"
2:	.balign 4
3:	.quad pvh_start32
4:	.balign 4

	.section .text.pvh, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl %ebx, pvh_start_info_paddr
	lgdt gdt_descriptor
	movl $pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $GDT_KERNEL_CS, $long_mode_entry

	.code64
long_mode_entry:
	movl $GDT_KERNEL_DS, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	leaq ring0_stack_top(%rip), %rsp
	movq pvh_start_info_paddr(%rip), %rdi
	call ring0_main              /* does not return */
1:	cli
	hlt
	jmp 1b

/*
 * enter_ring3(entry %rdi, stack_top %rsi, argument %rdx): iretq to ring 3 with
 * interrupts off. (This KVM shows ring 3 IF=1 whatever we load; the handlers cope.)
 */
	.text
	.globl enter_ring3
enter_ring3:
	movl $(GDT_USER_DS | RPL_USER), %eax
	movl %eax, %ds
	movl %eax, %es
	pushq $(GDT_USER_DS | RPL_USER)
	leaq -8(%rsi), %rsi          /* as if called: %rsp = 8 mod 16 at entry */
	pushq %rsi
	pushq $0x002                 /* RFLAGS: only the always-one bit */
	pushq $(GDT_USER_CS | RPL_USER)
	pushq %rdi
	movq %rdx, %rdi
	iretq

/*
 * Exceptions: push a zero error code where the CPU pushes none, then the vector and all
 * general registers (struct exception_frame), and hand the frame to ring0_exception().
 * It either reports and halts, or serves a ring-0 call (see layout.h) and returns here.
 */
#define HAS_ERROR_CODE(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || (v) == 21 || (v) == 29 || (v) == 30)

	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exception_stub_\v:
	.if HAS_ERROR_CODE(\v) == 0
	pushq $0
	.endif
	pushq $\v
	jmp exception_common
	.endr

exception_common:
	pushq %r15
	pushq %r14
	pushq %r13
	pushq %r12
	pushq %r11
	pushq %r10
	pushq %r9
	pushq %r8
	pushq %rbp
	pushq %rdi
	pushq %rsi
	pushq %rdx
	pushq %rcx
	pushq %rbx
	pushq %rax
	movq %rsp, %rdi              /* struct exception_frame *; 16-byte aligned here */
	call ring0_exception
	popq %rax
	popq %rbx
	popq %rcx
	popq %rdx
	popq %rsi
	popq %rdi
	popq %rbp
	popq %r8
	popq %r9
	popq %r10
	popq %r11
	popq %r12
	popq %r13
	popq %r14
	popq %r15
	addq $16, %rsp               /* vector, error code */
	iretq

/*
 * Interrupts: save the registers the C ABI lets ring0_interrupt() clobber. The CPU's
 * 5-word frame leaves %rsp 8 mod 16; nine pushes realign it for the call.
 */
	.macro INTERRUPT_STUB name, vector
interrupt_stub_\name:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	movl $\vector, %edi
	call ring0_interrupt
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	iretq
	.endm

	.irp v, 0x20,0x21,0x22,0x23,0x24,0x25,0x26,0x27,0x28,0x29,0x2a,0x2b,0x2c,0x2d,0x2e,0x2f
	INTERRUPT_STUB \v, \v
	.endr
	INTERRUPT_STUB timer, VECTOR_TIMER
	INTERRUPT_STUB apic_spurious, VECTOR_APIC_SPURIOUS

	.section .rodata
	.balign 8
	/* struct idt_stub { uint64_t vector; void *entry; }[], ended by idt_stubs_end */
	.globl idt_stubs, idt_stubs_end
idt_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad \v, exception_stub_\v
	.endr
	.irp v, 0x20,0x21,0x22,0x23,0x24,0x25,0x26,0x27,0x28,0x29,0x2a,0x2b,0x2c,0x2d,0x2e,0x2f
	.quad \v, interrupt_stub_\v
	.endr
	.quad VECTOR_TIMER, interrupt_stub_timer
	.quad VECTOR_APIC_SPURIOUS, interrupt_stub_apic_spurious
idt_stubs_end:

	.data
	.balign 8
	.globl gdt
gdt:
	.quad 0                      /* null */
	.quad 0x00af9a000000ffff     /* GDT_KERNEL_CS: 64-bit code, DPL 0 */
	.quad 0x00cf92000000ffff     /* GDT_KERNEL_DS */
	.quad 0x00affa000000ffff     /* GDT_USER_CS: 64-bit code, DPL 3 */
	.quad 0x00cff2000000ffff     /* GDT_USER_DS: DPL 3 */
	.quad 0, 0                   /* GDT_TSS: filled by ring0_main (base is split) */
gdt_descriptor:                      /* lgdt operand; 32-bit mode reads the low 4 base bytes */
	.word GDT_ENTRIES * 8 - 1
	.quad gdt

	.globl pvh_start_info_paddr
pvh_start_info_paddr:
	.quad 0

/* Identity map of 0..IDENTITY_MAP_GIB GiB with 2 MiB pages; the last GiB uncached. */
	.section .data.page_tables, "aw"
	.balign 4096
pml4:
	.quad pdpt + PTE_TABLE
	.fill 511, 8, 0
pdpt:
	.set gib, 0
	.rept IDENTITY_MAP_GIB
	.quad page_directories + gib * 4096 + PTE_TABLE
	.set gib, gib + 1
	.endr
	.fill 512 - IDENTITY_MAP_GIB, 8, 0
page_directories:
	.set page, 0
	.rept 512 * (IDENTITY_MAP_GIB - 1)
	.quad (page << 21) | PTE_RAM_2M
	.set page, page + 1
	.endr
	.rept 512
	.quad (page << 21) | PTE_MMIO_2M
	.set page, page + 1
	.endr

	.section .bss
	.balign 16
	.globl ring0_stack_top, ring3_stack_top
	.skip RING0_STACK_SIZE
ring0_stack_top:
	.skip RING3_STACK_SIZE
ring3_stack_top:

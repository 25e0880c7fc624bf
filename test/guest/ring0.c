/*
 * Everything the guest does at CPL 0. On this host guest ring 0 is emulated (~1000x slower
 * than ring 3) and the emulator rejects some instructions, so this file stays tiny: no
 * `int n`, no XSAVE/CMPXCHG16B, no SSE (-mgeneral-regs-only), no loops over big tables.
 *
 *  - ring0_main: TSS + IDT + 8259s masked, then iretq to ring3_main;
 *  - ring0_exception: reports a fault and halts, or serves a ring-0 call (layout.h):
 *    wait for a timer, or halt for good;
 *  - ring0_interrupt: the LAPIC timer (and spurious vectors).
 */
#include "guest.h"

void ring3_main(uint64_t start_info_paddr);
void __attribute__((noreturn)) enter_ring3(void (*entry)(uint64_t), void *stack_top, uint64_t argument);
extern uint64_t gdt[GDT_ENTRIES];
extern char ring0_stack_top[], ring3_stack_top[];

/* 64-bit TSS followed by a full I/O-permission bitmap. This KVM shows ring 3 IOPL=0
 * whatever we load, so the bitmap (all zero = every port allowed) is what lets ring 3 do
 * port I/O. The byte after the bitmap must be all ones. */
struct tss64 {
	uint32_t reserved0;        /* 0x00 */
	uint64_t rsp0;             /* 0x04: stack for interrupts arriving in ring 3 */
	uint64_t rsp1, rsp2;       /* 0x0c, 0x14 */
	uint64_t reserved1;        /* 0x1c */
	uint64_t ist[7];           /* 0x24 */
	uint64_t reserved2;        /* 0x5c */
	uint16_t reserved3;        /* 0x64 */
	uint16_t iomap_base;       /* 0x66: offset of io_bitmap */
	uint8_t io_bitmap[65536 / 8];
	uint8_t io_bitmap_end;
} __attribute__((packed, aligned(16)));
_Static_assert(__builtin_offsetof(struct tss64, io_bitmap) == 0x68, "tss64 layout");

static struct tss64 tss = {
	.rsp0 = (uint64_t)ring0_stack_top,
	.iomap_base = __builtin_offsetof(struct tss64, io_bitmap),
	.io_bitmap_end = 0xff,
};

#define TSS_DESCRIPTOR_TYPE_AVAILABLE 0x89   /* present, DPL 0, 64-bit TSS (available) */

static void gdt_install_tss(void)
{
	uint64_t base = (uint64_t)&tss;
	uint64_t limit = sizeof tss - 1;
	gdt[GDT_TSS / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) |
			   ((uint64_t)TSS_DESCRIPTOR_TYPE_AVAILABLE << 40) |
			   (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt[GDT_TSS / 8 + 1] = base >> 32;
	__asm__ volatile("ltr %w0" : : "r"((uint16_t)GDT_TSS));
}

struct idt_gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t ist;
	uint8_t type_attributes;
	uint16_t offset_middle;
	uint32_t offset_high;
	uint32_t reserved;
} __attribute__((packed));

#define IDT_INTERRUPT_GATE 0x8e            /* present, DPL 0, 64-bit interrupt gate */

/* Vectors without a stub stay not-present: an unexpected interrupt then shows up as #NP
 * with the vector in its error code, which ring0_exception reports. */
struct idt_stub { uint64_t vector; void (*entry)(void); };
extern const struct idt_stub idt_stubs[], idt_stubs_end[];
static struct idt_gate idt[256] __attribute__((aligned(16)));

static void idt_install(void)
{
	for (const struct idt_stub *stub = idt_stubs; stub < idt_stubs_end; stub++) {
		uint64_t offset = (uint64_t)stub->entry;
		struct idt_gate *gate = &idt[stub->vector];
		gate->offset_low = (uint16_t)offset;
		gate->selector = GDT_KERNEL_CS;
		gate->type_attributes = IDT_INTERRUPT_GATE;
		gate->offset_middle = (uint16_t)(offset >> 16);
		gate->offset_high = (uint32_t)(offset >> 32);
	}
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) descriptor = {
		sizeof idt - 1, (uint64_t)idt,
	};
	__asm__ volatile("lidt %0" : : "m"(descriptor));
}

/* 8259 pair: remap to VECTOR_PIC_BASE (firmware may leave IRQ0 on vector 8, the #DF
 * vector) and mask every line. The guest's only interrupt is its LAPIC timer. */
#define PIC_MASTER_COMMAND 0x20
#define PIC_MASTER_DATA    0x21
#define PIC_SLAVE_COMMAND  0xa0
#define PIC_SLAVE_DATA     0xa1
#define PIC_ICW1_INIT_ICW4 0x11
#define PIC_ICW4_8086      0x01
#define PIC_EOI            0x20

static void pic_remap_and_mask(void)
{
	outb(PIC_MASTER_COMMAND, PIC_ICW1_INIT_ICW4);
	outb(PIC_SLAVE_COMMAND, PIC_ICW1_INIT_ICW4);
	outb(PIC_MASTER_DATA, VECTOR_PIC_BASE);
	outb(PIC_SLAVE_DATA, VECTOR_PIC_BASE + 8);
	outb(PIC_MASTER_DATA, 1 << 2);             /* slave on IRQ2 */
	outb(PIC_SLAVE_DATA, 2);                   /* slave identity */
	outb(PIC_MASTER_DATA, PIC_ICW4_8086);
	outb(PIC_SLAVE_DATA, PIC_ICW4_8086);
	outb(PIC_MASTER_DATA, 0xff);
	outb(PIC_SLAVE_DATA, 0xff);
}

void __attribute__((noreturn)) ring0_main(uint64_t start_info_paddr)
{
	gdt_install_tss();
	idt_install();
	pic_remap_and_mask();
	enter_ring3(ring3_main, ring3_stack_top, start_info_paddr);
}

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* --- LAPIC timer, set up on first use (only `wait=ring0` needs it). --- */

#define LAPIC_BASE_ADDRESS_MASK  0x000ffffffffff000ull
#define LAPIC_BASE_ENABLE        (1u << 11)
#define LAPIC_TPR                0x080
#define LAPIC_EOI                0x0b0
#define LAPIC_SVR                0x0f0
#define LAPIC_SVR_ENABLE         (1u << 8)
#define LAPIC_LVT_TIMER          0x320
#define LAPIC_TIMER_INITIAL      0x380
#define LAPIC_TIMER_DIVIDE       0x3e0
#define LAPIC_TIMER_DIVIDE_BY_1  0xb
#define LAPIC_TIMER_ONE_SHOT     (0u << 17)
#define LAPIC_TIMER_TSC_DEADLINE (2u << 17)
#define CPUID1_ECX_TSC_DEADLINE  (1u << 24)
/* KVM's LAPIC timer counts at 1 GHz (APIC_BUS_CYCLE_NS = 1); an early wake-up only
 * costs another round of the wait loop, so an approximate rate is enough. */
#define LAPIC_TIMER_NS_PER_COUNT 1

static uintptr_t lapic_base;
static bool lapic_tsc_deadline;

static void lapic_timer_init(void)
{
	uint64_t apic_base_msr = rdmsr(MSR_APIC_BASE);
	if (!(apic_base_msr & LAPIC_BASE_ENABLE))
		wrmsr(MSR_APIC_BASE, apic_base_msr | LAPIC_BASE_ENABLE);
	lapic_base = (uintptr_t)(apic_base_msr & LAPIC_BASE_ADDRESS_MASK);
	lapic_tsc_deadline = (cpuid(1).ecx & CPUID1_ECX_TSC_DEADLINE) != 0;
	mmio_write32(lapic_base + LAPIC_TPR, 0);
	mmio_write32(lapic_base + LAPIC_SVR, LAPIC_SVR_ENABLE | VECTOR_APIC_SPURIOUS);
	if (lapic_tsc_deadline) {
		mmio_write32(lapic_base + LAPIC_LVT_TIMER, LAPIC_TIMER_TSC_DEADLINE | VECTOR_TIMER);
	} else {
		mmio_write32(lapic_base + LAPIC_TIMER_DIVIDE, LAPIC_TIMER_DIVIDE_BY_1);
		mmio_write32(lapic_base + LAPIC_LVT_TIMER, LAPIC_TIMER_ONE_SHOT | VECTOR_TIMER);
	}
}

static void lapic_timer_arm(uint64_t deadline, uint64_t now)
{
	if (lapic_tsc_deadline) {
		wrmsr(MSR_TSC_DEADLINE, deadline);
		return;
	}
	uint64_t khz = tsc_khz ? tsc_khz : 1000000;       /* uncalibrated: guess 1 GHz */
	uint64_t delta = deadline - now;
	if (delta > 4000000000ull)
		delta = 4000000000ull;                   /* keeps delta * 10^6 in 64 bits */
	uint64_t count = delta * 1000000 / khz / LAPIC_TIMER_NS_PER_COUNT;
	if (count > 0xffffffffu)
		count = 0xffffffffu;
	mmio_write32(lapic_base + LAPIC_TIMER_INITIAL, count ? (uint32_t)count : 1);
}

/* Waits in ring 0 with `sti; hlt` (the sti shadow closes the race with the interrupt). */
static void wait_until_tsc(uint64_t deadline)
{
	if (!lapic_base)
		lapic_timer_init();
	for (;;) {
		uint64_t now = rdtsc();
		if (now >= deadline)
			return;
		lapic_timer_arm(deadline, now);
		__asm__ volatile("sti; hlt; cli" : : : "memory");
	}
}

/* With an IDT limit of 0 every exception is a #GP on the IDT itself, then a #DF that
 * fails the same way: a triple fault, which KVM reports as KVM_EXIT_SHUTDOWN. */
static void __attribute__((noreturn)) triple_fault(void)
{
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) empty = { 0, 0 };
	__asm__ volatile("lidt %0; ud2" : : "m"(empty));
	__builtin_unreachable();
}

/*
 * An instruction this host's ring-0 emulator rejects (KVM_EXIT_INTERNAL_ERROR, emulation
 * failure). EMULATION_FAILURE_INT3 is the wall Linux's int3_selftest hits, which baton-hv
 * completes (RIP + 1, #BP injected: ring0_exception then reports exception 3 and halts);
 * EMULATION_FAILURE_SSE is an SSE instruction no VMM here completes, so the VM must stop
 * in internal-error.
 */
static void emulation_failure(uint64_t which)
{
	if (which == EMULATION_FAILURE_INT3)
		__asm__ volatile("int3");
	else
		__asm__ volatile("pxor %xmm0, %xmm0");
}

static uint64_t ring0_call_serve(uint64_t number, uint64_t argument)
{
	switch (number) {
	case RING0_CALL_WAIT_UNTIL_TSC:
		wait_until_tsc(argument);
		return 0;
	case RING0_CALL_HALT_FOREVER:
		halt_forever();
	case RING0_CALL_TRIPLE_FAULT:
		triple_fault();
	case RING0_CALL_EMULATION_FAILURE:
		emulation_failure(argument);
		return 0;
	}
	return (uint64_t)-1;
}

void ring0_interrupt(uint64_t vector)
{
	if (vector == VECTOR_TIMER) {
		mmio_write32(lapic_base + LAPIC_EOI, 0);
	} else if (vector >= VECTOR_PIC_BASE && vector < VECTOR_PIC_BASE + 16) {
		/* masked lines can still produce a spurious IRQ7/15; a harmless EOI covers the rest */
		if (vector >= VECTOR_PIC_BASE + 8)
			outb(PIC_SLAVE_COMMAND, PIC_EOI);
		outb(PIC_MASTER_COMMAND, PIC_EOI);
	}
	/* VECTOR_APIC_SPURIOUS: no EOI by definition */
}

struct exception_frame {
	uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;     /* pushed by exception_common */
	uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t vector, error_code;                    /* pushed by the stubs */
	uint64_t rip, cs, rflags, rsp, ss;              /* pushed by the CPU */
};

#define VECTOR_GENERAL_PROTECTION 13
#define VECTOR_PAGE_FAULT         14
#define OPCODE_HLT                0xf4

static bool is_ring0_call(const struct exception_frame *frame)
{
	return frame->vector == VECTOR_GENERAL_PROTECTION && frame->error_code == 0 &&
	       (frame->cs & 3) == RPL_USER && *(const volatile uint8_t *)frame->rip == OPCODE_HLT;
}

void ring0_exception(struct exception_frame *frame)
{
	if (is_ring0_call(frame)) {
		frame->rax = ring0_call_serve(frame->rdi, frame->rsi);
		frame->rip += 1;                        /* past the hlt */
		return;
	}
	struct line line;
	line_start(&line, GUEST_TAG "exception ");
	line_u64(&line, frame->vector);
	line_str(&line, " error ");
	line_hex(&line, frame->error_code);
	line_str(&line, " at rip ");
	line_hex(&line, frame->rip);
	line_str(&line, " cs ");
	line_hex(&line, frame->cs);
	line_str(&line, " rsp ");
	line_hex(&line, frame->rsp);
	if (frame->vector == VECTOR_PAGE_FAULT) {
		uint64_t cr2;
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		line_str(&line, " cr2 ");
		line_hex(&line, cr2);
	}
	line_send(&line);
	halt_forever();
}

/* TSC frequency, in order of preference: the hypervisor timing leaf 0x40000010 (eax =
 * TSC kHz; KVM/QEMU and VMware), the crystal leaf 0x15, else one 50 ms measurement
 * against the PIT. */
#include "guest.h"

volatile uint64_t tsc_khz;

#define CPUID1_ECX_HYPERVISOR     (1u << 31)
#define CPUID_LEAF_HYPERVISOR     0x40000000u
#define CPUID_LEAF_TIMING         0x40000010u   /* eax: TSC kHz, ebx: LAPIC bus kHz */
#define CPUID_LEAF_TSC_CRYSTAL    0x15u         /* TSC = ecx (crystal Hz) * ebx / eax */

static uint64_t tsc_khz_from_timing_leaf(void)
{
	if (!(cpuid(1).ecx & CPUID1_ECX_HYPERVISOR))
		return 0;
	if (cpuid(CPUID_LEAF_HYPERVISOR).eax < CPUID_LEAF_TIMING)
		return 0;
	return cpuid(CPUID_LEAF_TIMING).eax;
}

static uint64_t tsc_khz_from_crystal_leaf(void)
{
	if (cpuid(0).eax < CPUID_LEAF_TSC_CRYSTAL)
		return 0;
	struct cpuid_regs r = cpuid(CPUID_LEAF_TSC_CRYSTAL);
	if (!r.eax || !r.ebx || !r.ecx)
		return 0;
	return (uint64_t)r.ecx * r.ebx / r.eax / 1000;
}

/*
 * PIT fallback: channel 0 as a free-running 16-bit down-counter, read back with latch
 * commands. (Channel 2 would need its gate on port 0x61, which QEMU microvm lacks.)
 * Channel 0's IRQ0 stays masked at the 8259 and the IOAPIC.
 * If the vCPU is descheduled for longer than one 55 ms wrap, a window undercounts and
 * overestimates the frequency, never the reverse: keep the lowest of a few windows.
 */
#define PIT_HZ                    1193182u
#define PIT_CHANNEL0_DATA         0x40
#define PIT_COMMAND               0x43
#define PIT_CHANNEL0_RATE_65536   0x34          /* channel 0, lobyte/hibyte, mode 2, binary */
#define PIT_CHANNEL0_LATCH        0x00
#define PIT_WINDOW_MS             20
#define PIT_WINDOWS               3
#define PIT_MAX_POLLS             100000        /* each poll is 3 exits (~30-80 us each) */

static uint16_t pit_channel0_count(void)
{
	outb(PIT_COMMAND, PIT_CHANNEL0_LATCH);
	uint8_t low = inb(PIT_CHANNEL0_DATA);
	uint8_t high = inb(PIT_CHANNEL0_DATA);
	return (uint16_t)(low | high << 8);
}

static uint64_t tsc_khz_from_pit_window(void)
{
	uint32_t target = PIT_HZ * PIT_WINDOW_MS / 1000;
	uint16_t previous = pit_channel0_count();
	uint64_t start = rdtsc();
	uint32_t elapsed = 0;
	for (uint32_t polls = 0; elapsed < target; polls++) {
		if (polls > PIT_MAX_POLLS)
			return 0;                     /* not counting: no PIT behind these ports */
		uint16_t count = pit_channel0_count();
		elapsed += (uint16_t)(previous - count);   /* down-counter, wraps mod 65536 */
		previous = count;
	}
	return (rdtsc() - start) * PIT_HZ / elapsed / 1000;
}

static uint64_t tsc_khz_from_pit(void)
{
	outb(PIT_COMMAND, PIT_CHANNEL0_RATE_65536);
	outb(PIT_CHANNEL0_DATA, 0);                   /* count 0 means 65536 */
	outb(PIT_CHANNEL0_DATA, 0);
	uint64_t lowest = UINT64_MAX;
	for (int i = 0; i < PIT_WINDOWS; i++) {
		uint64_t khz = tsc_khz_from_pit_window();
		if (!khz)
			return 0;
		if (khz < lowest)
			lowest = khz;
	}
	return lowest >= 1000 ? lowest : 0;
}

const char *tsc_calibrate(void)
{
	static const char *source;
	if (source)
		return source;
	uint64_t khz;
	if ((khz = tsc_khz_from_timing_leaf()))
		source = "cpuid-0x40000010";
	else if ((khz = tsc_khz_from_crystal_leaf()))
		source = "cpuid-0x15";
	else if ((khz = tsc_khz_from_pit()))
		source = "pit";
	else {
		static const char reason[] = "no timing cpuid leaf and no PIT channel 2";
		fail("cannot determine the TSC frequency:", reason, sizeof reason - 1);
	}
	tsc_khz = khz;
	return source;
}

uint64_t tsc_from_ms(uint64_t ms)
{
	tsc_calibrate();
	return ms * tsc_khz;
}

void tsc_spin_until(uint64_t deadline)
{
	while (rdtsc() < deadline)
		cpu_relax();
}

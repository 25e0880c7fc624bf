/*
 * Mode `counter [interval_ms=N] [wait=ring3|ring0]`: prints `tick N tsc T` every interval,
 * for continuity checks across save/restore and migration. wait=ring3 spins in ring 3
 * between ticks; wait=ring0 sleeps in ring 0 (a ring-0 call, sti; hlt on the LAPIC
 * timer, iretq back), so a save can catch the vCPU halted in ring 0 as well as busy in ring 3.
 */
#include "guest.h"

#define DEFAULT_INTERVAL_MS 10
#define POWER_POLL_MS       10   /* an i8042 status read is an exit: not more often */

/* Waits until `deadline`, looking for a power-off request at least once. */
static void idle_until(uint64_t deadline, bool wait_in_ring0)
{
	uint64_t slice = tsc_from_ms(POWER_POLL_MS);
	do {
		uint64_t now = rdtsc();
		if (now < deadline) {
			uint64_t slice_end = deadline - now > slice ? now + slice : deadline;
			if (wait_in_ring0)
				ring0_wait_until_tsc(slice_end);
			else
				tsc_spin_until(slice_end);
		}
		if (power_request_pending())
			power_off();
	} while (rdtsc() < deadline);
}

void mode_counter(const char *options)
{
	uint64_t interval_ms = cmdline_option_u64(options, "interval_ms", DEFAULT_INTERVAL_MS);
	if (interval_ms == 0) {
		static const char option[] = "interval_ms=0";
		fail("bad option", option, sizeof option - 1);
	}
	bool wait_in_ring0 = cmdline_option_is(options, "wait", "ring0", "ring3");
	if (!wait_in_ring0 && !cmdline_option_is(options, "wait", "ring3", "ring3")) {
		static const char expected[] = "wait= (expected ring3 or ring0)";
		fail("bad option", expected, sizeof expected - 1);
	}

	const char *tsc_source = tsc_calibrate();
	struct line line;
	line_start(&line, GUEST_TAG "counter interval_ms ");
	line_u64(&line, interval_ms);
	line_str(&line, wait_in_ring0 ? " wait ring0" : " wait ring3");
	line_str(&line, " tsc_khz ");
	line_u64(&line, tsc_khz);
	line_str(&line, " source ");
	line_str(&line, tsc_source);
	line_send(&line);

	uint64_t interval = tsc_from_ms(interval_ms);
	uint64_t next = rdtsc();
	for (uint64_t tick = 0;; tick++) {
		line_start(&line, "tick ");
		line_u64(&line, tick);
		line_str(&line, " tsc ");
		line_u64(&line, rdtsc());
		line_send(&line);
		/* After a pause (a save, a migration) start the schedule afresh rather than
		 * catching up with a burst: the gap then shows in the tick TSCs. */
		next += interval;
		uint64_t now = rdtsc();
		if (next < now)
			next = now;
		idle_until(next, wait_in_ring0);
	}
}

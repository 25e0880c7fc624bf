/* Declarations shared between the test guest's files. */
#ifndef TESTGUEST_GUEST_H
#define TESTGUEST_GUEST_H

#include "hw.h"
#include "layout.h"

#define GUEST_TAG "baton-testguest: "

/* console.c: the 8250 UART at COM1, written without polling LSR (every port access is an
 * exit; the emulated UARTs we run on accept bytes as fast as we write them). */
void console_write(const char *text, size_t length);
void console_puts(const char *text);
struct line { char text[160]; size_t length; };
void line_start(struct line *line, const char *text);
void line_str(struct line *line, const char *text);
void line_u64(struct line *line, uint64_t value);
void line_hex(struct line *line, uint64_t value);
void line_send(struct line *line);          /* appends '\n' and writes it out */

/* cmdline.c: "<mode> key=value key=value ..." */
bool cmdline_word(const char **cursor, const char **word, size_t *length);
bool cmdline_option(const char *options, const char *key, const char **value, size_t *length);
uint64_t cmdline_option_u64(const char *options, const char *key, uint64_t fallback);
bool cmdline_option_is(const char *options, const char *key, const char *expected, const char *fallback);

/* tsc.c */
extern volatile uint64_t tsc_khz;           /* read by ring 0 for the one-shot LAPIC timer */
const char *tsc_calibrate(void);     /* returns where the frequency came from */
uint64_t tsc_from_ms(uint64_t ms);
void tsc_spin_until(uint64_t deadline);

/* power.c */
bool power_request_pending(void);          /* Ctrl-Alt-Del seen on the i8042 */
void __attribute__((noreturn)) power_off(void);
void __attribute__((noreturn)) reset_via_i8042(void);
void __attribute__((noreturn)) fail(const char *what, const char *detail, size_t detail_length);

/* Modes: one function per command-line mode, all run in ring 3 (see main.c). */
void __attribute__((noreturn)) mode_counter(const char *options);
void __attribute__((noreturn)) mode_reboot_test(const char *options);
void __attribute__((noreturn)) mode_triple_fault(const char *options);
void __attribute__((noreturn)) mode_emu_fail(const char *options);
void __attribute__((noreturn)) mode_echo(const char *options);     /* net.c */
void __attribute__((noreturn)) mode_sink(const char *options);
void __attribute__((noreturn)) mode_source(const char *options);
void __attribute__((noreturn)) mode_mq_echo(const char *options);  /* mq.c */

/* Boot facts gathered from hvm_start_info (main.c). */
struct boot_info {
	const char *cmdline;
	uint64_t ram_bytes;        /* sum of RAM ranges in the PVH memory map, 0 if absent */
	uint64_t ram_top;          /* end of the highest RAM range */
	uint64_t rsdp_paddr;
};
extern struct boot_info boot_info;

/* Ring 3 -> ring 0: a deliberate `hlt` at CPL 3 (see layout.h; ring0.c serves it). */
static inline uint64_t ring0_call(uint64_t number, uint64_t argument)
{
	uint64_t result;
	__asm__ volatile("hlt" : "=a"(result) : "D"(number), "S"(argument) : "memory");
	return result;
}
static inline void ring0_wait_until_tsc(uint64_t deadline) { ring0_call(RING0_CALL_WAIT_UNTIL_TSC, deadline); }
static inline void ring0_emulation_failure(uint64_t which) { ring0_call(RING0_CALL_EMULATION_FAILURE, which); }
static inline void __attribute__((noreturn)) ring0_triple_fault(void)
{
	ring0_call(RING0_CALL_TRIPLE_FAULT, 0);
	__builtin_unreachable();
}
static inline void __attribute__((noreturn)) ring0_halt_forever(void)
{
	ring0_call(RING0_CALL_HALT_FOREVER, 0);
	__builtin_unreachable();
}

/* string.c: what the compiler may call on its own. */
void *memset(void *dst, int value, size_t length);
void *memcpy(void *dst, const void *src, size_t length);
size_t strlen(const char *text);

#endif

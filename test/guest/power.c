/*
 * The ways out: graceful power-off requested with Ctrl-Alt-Del on the i8042 (the request
 * path a Linux guest honours too), ACPI S5 through PM1a_CNT, and reset through the i8042.
 */
#include "guest.h"

#define I8042_DATA                0x60
#define I8042_STATUS              0x64      /* read */
#define I8042_COMMAND             0x64      /* write */
#define I8042_STATUS_OUTPUT_FULL  0x01
#define I8042_STATUS_AUX_DATA     0x20      /* the byte is from the mouse port */
#define I8042_STATUS_ABSENT       0xff      /* what an unassigned port reads (QEMU microvm) */
#define I8042_COMMAND_PULSE_RESET 0xfe
#define I8042_COMMAND_READ_CONFIG 0x20
#define I8042_COMMAND_WRITE_CONFIG 0x60
#define I8042_CONFIG_TRANSLATE    0x40      /* set 2 from the keyboard becomes set 1 */
#define I8042_REPLY_POLLS         100
#define I8042_MAX_BYTES_PER_POLL  16

/* Scancode set 1 (what the controller delivers with translation on). */
#define SCANCODE_EXTENDED         0xe0
#define SCANCODE_BREAK            0x80
#define SCANCODE_CTRL             0x1d      /* left, or right after SCANCODE_EXTENDED */
#define SCANCODE_ALT              0x38
#define SCANCODE_DELETE           0x53      /* after SCANCODE_EXTENDED */

/* PM1a control block at 0x604 as QEMU's PIIX4 PM (pc, base 0x600 set by SeaBIOS) and
 * ICH9 LPC (q35) place it; SLP_TYP 0 is S5 in QEMU's DSDT. */
#define ACPI_PM1A_CONTROL         0x604
#define ACPI_PM1_SLP_EN           (1u << 13)
#define ACPI_PM1_SLP_TYP_S5       (0u << 10)

/* The VMM may act on our write asynchronously: give it this long before saying it failed. */
#define EXIT_GRACE_MS             1000
#define EXIT_GRACE_KHZ_GUESS      3000000   /* when the TSC was never calibrated */

static bool ctrl_down, alt_down, extended_prefix, translation_checked;

/*
 * Without firmware that configures the controller (QEMU with qboot, for one) the keyboard
 * speaks scancode set 2 untranslated; turn translation on so what arrives is set 1. A
 * controller that does not answer the read is left alone.
 */
static void i8042_enable_translation(void)
{
	translation_checked = true;
	if (inb(I8042_STATUS) == I8042_STATUS_ABSENT)
		return;
	outb(I8042_COMMAND, I8042_COMMAND_READ_CONFIG);
	for (int i = 0; i < I8042_REPLY_POLLS; i++) {
		if (inb(I8042_STATUS) & I8042_STATUS_OUTPUT_FULL) {
			uint8_t config = inb(I8042_DATA);
			if (!(config & I8042_CONFIG_TRANSLATE)) {
				outb(I8042_COMMAND, I8042_COMMAND_WRITE_CONFIG);
				outb(I8042_DATA, config | I8042_CONFIG_TRANSLATE);
			}
			return;
		}
	}
}

bool power_request_pending(void)
{
	if (!translation_checked)
		i8042_enable_translation();
	for (int i = 0; i < I8042_MAX_BYTES_PER_POLL; i++) {
		uint8_t status = inb(I8042_STATUS);
		if (status == I8042_STATUS_ABSENT || !(status & I8042_STATUS_OUTPUT_FULL))
			return false;
		uint8_t code = inb(I8042_DATA);
		if (status & I8042_STATUS_AUX_DATA)
			continue;
		if (code == SCANCODE_EXTENDED) {
			extended_prefix = true;
			continue;
		}
		bool pressed = !(code & SCANCODE_BREAK);
		uint8_t key = code & (uint8_t)~SCANCODE_BREAK;
		bool extended = extended_prefix;
		extended_prefix = false;
		if (key == SCANCODE_CTRL)
			ctrl_down = pressed;
		else if (key == SCANCODE_ALT)
			alt_down = pressed;
		else if (extended && key == SCANCODE_DELETE && pressed && ctrl_down && alt_down)
			return true;
	}
	return false;
}

static void wait_for_vmm(void)
{
	uint64_t khz = tsc_khz ? tsc_khz : EXIT_GRACE_KHZ_GUESS;
	tsc_spin_until(rdtsc() + EXIT_GRACE_MS * khz);
}

void power_off(void)
{
	console_puts(GUEST_TAG "powering off\n");
	outw(ACPI_PM1A_CONTROL, ACPI_PM1_SLP_EN | ACPI_PM1_SLP_TYP_S5);
	wait_for_vmm();
	console_puts(GUEST_TAG "power-off failed\n");
	ring0_halt_forever();
}

void reset_via_i8042(void)
{
	console_puts(GUEST_TAG "resetting\n");
	outb(I8042_COMMAND, I8042_COMMAND_PULSE_RESET);
	wait_for_vmm();
	console_puts(GUEST_TAG "reset failed\n");
	ring0_halt_forever();
}

void fail(const char *what, const char *detail, size_t detail_length)
{
	struct line line;
	line_start(&line, GUEST_TAG);
	line_str(&line, what);
	line_str(&line, " ");
	for (size_t i = 0; i < detail_length && line.length < sizeof line.text - 1; i++)
		line.text[line.length++] = detail[i];
	line_send(&line);
	power_off();
}

/* Serial console: 8250 UART transmit register at COM1, one `rep outsb` per line. */
#include "guest.h"

#define COM1_THR 0x3f8

void console_write(const char *text, size_t length)
{
	outsb(COM1_THR, text, length);
}

void console_puts(const char *text)
{
	console_write(text, strlen(text));
}

void line_start(struct line *line, const char *text)
{
	line->length = 0;
	line_str(line, text);
}

static void line_char(struct line *line, char c)
{
	/* keep one byte for the '\n' that line_send appends */
	if (line->length < sizeof line->text - 1)
		line->text[line->length++] = c;
}

void line_str(struct line *line, const char *text)
{
	while (*text)
		line_char(line, *text++);
}

void line_u64(struct line *line, uint64_t value)
{
	char digits[20];
	int count = 0;
	do {
		digits[count++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (count)
		line_char(line, digits[--count]);
}

void line_hex(struct line *line, uint64_t value)
{
	line_str(line, "0x");
	for (int shift = 60; shift >= 0; shift -= 4)
		line_char(line, "0123456789abcdef"[(value >> shift) & 0xf]);
}

void line_send(struct line *line)
{
	line->text[line->length++] = '\n';
	console_write(line->text, line->length);
}

/* The few libc functions GCC may emit calls to even with -ffreestanding. */
#include "guest.h"

void *memset(void *dst, int value, size_t length)
{
	unsigned char *d = dst;
	while (length--)
		*d++ = (unsigned char)value;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t length)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	while (length--)
		*d++ = *s++;
	return dst;
}

size_t strlen(const char *text)
{
	size_t length = 0;
	while (text[length])
		length++;
	return length;
}

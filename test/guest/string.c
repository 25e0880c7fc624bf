/* The few libc functions GCC may emit calls to even with -ffreestanding. `rep` string
 * instructions: fast in ring 3 (the network modes copy every frame), and the ring-0
 * emulator handles them too. */
#include "guest.h"

void *memset(void *dst, int value, size_t length)
{
	void *d = dst;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(length) : "a"(value) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, size_t length)
{
	void *d = dst;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(length) : : "memory");
	return dst;
}

size_t strlen(const char *text)
{
	size_t length = 0;
	while (text[length])
		length++;
	return length;
}

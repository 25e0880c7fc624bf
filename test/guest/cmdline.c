/* Command line: "<mode> key=value key=value ...". Words that are not key=value (or keys
 * a mode does not know, such as what a VMM appends on its own) are ignored. */
#include "guest.h"

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool cmdline_word(const char **cursor, const char **word, size_t *length)
{
	const char *p = *cursor;
	while (*p && is_space(*p))
		p++;
	if (!*p)
		return false;
	*word = p;
	while (*p && !is_space(*p))
		p++;
	*length = (size_t)(p - *word);
	*cursor = p;
	return true;
}

/* The last key=value for `key` wins, as on Linux's command line. */
bool cmdline_option(const char *options, const char *key, const char **value, size_t *length)
{
	size_t key_length = strlen(key);
	const char *word;
	size_t word_length;
	bool found = false;
	while (cmdline_word(&options, &word, &word_length)) {
		if (word_length > key_length && word[key_length] == '=') {
			size_t i = 0;
			while (i < key_length && word[i] == key[i])
				i++;
			if (i == key_length) {
				*value = word + key_length + 1;
				*length = word_length - key_length - 1;
				found = true;
			}
		}
	}
	return found;
}

uint64_t cmdline_option_u64(const char *options, const char *key, uint64_t fallback)
{
	const char *value;
	size_t length;
	if (!cmdline_option(options, key, &value, &length))
		return fallback;
	uint64_t number = 0;
	for (size_t i = 0; i < length; i++) {
		if (value[i] < '0' || value[i] > '9' || number > (UINT64_MAX - 9) / 10)
			fail("bad number in option", value - strlen(key) - 1, length + strlen(key) + 1);
		number = number * 10 + (uint64_t)(value[i] - '0');
	}
	if (length == 0)
		fail("empty option", value - strlen(key) - 1, strlen(key) + 1);
	return number;
}

bool cmdline_option_is(const char *options, const char *key, const char *expected, const char *fallback)
{
	const char *value;
	size_t length;
	if (!cmdline_option(options, key, &value, &length)) {
		value = fallback;
		length = strlen(fallback);
	}
	size_t expected_length = strlen(expected);
	if (length != expected_length)
		return false;
	for (size_t i = 0; i < length; i++)
		if (value[i] != expected[i])
			return false;
	return true;
}

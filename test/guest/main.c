/*
 * Ring-3 entry: say we are ready, read the PVH start info, and run the mode named by the
 * first word of the command line. Modes never return; they end by powering off, resetting
 * or halting.
 */
#include "guest.h"
#include "pvh.h"

struct boot_info boot_info;

static void boot_info_read(uint64_t start_info_paddr)
{
	const struct hvm_start_info *info = (const struct hvm_start_info *)start_info_paddr;
	boot_info.cmdline = "";
	if (!info || info->magic != HVM_START_MAGIC) {
		static const char reason[] = "%ebx does not point at struct hvm_start_info (magic 0x336ec578)";
		fail("bad PVH boot:", reason, sizeof reason - 1);
	}
	if (info->cmdline_paddr)
		boot_info.cmdline = (const char *)info->cmdline_paddr;
	boot_info.rsdp_paddr = info->rsdp_paddr;
	if (info->version < 1 || !info->memmap_paddr)
		return;
	const struct hvm_memmap_table_entry *entry = (const struct hvm_memmap_table_entry *)info->memmap_paddr;
	for (uint32_t i = 0; i < info->memmap_entries; i++, entry++) {
		if (entry->type != HVM_MEMMAP_TYPE_RAM)
			continue;
		boot_info.ram_bytes += entry->size;
		if (entry->addr + entry->size > boot_info.ram_top)
			boot_info.ram_top = entry->addr + entry->size;
	}
}

void mode_reboot_test(const char *options)
{
	(void)options;
	reset_via_i8042();
}

/* Misbehaving guests, for the VMM's error paths: announce, then do it. */
void mode_triple_fault(const char *options)
{
	(void)options;
	console_puts(GUEST_TAG "triple-faulting\n");
	ring0_triple_fault();
}

void mode_emu_fail(const char *options)
{
	bool int3 = cmdline_option_is(options, "insn", "int3", "sse");
	if (!int3 && !cmdline_option_is(options, "insn", "sse", "sse")) {
		static const char expected[] = "insn= (expected sse or int3)";
		fail("bad option", expected, sizeof expected - 1);
	}
	console_puts(int3 ? GUEST_TAG "executing int3 in ring 0\n" : GUEST_TAG "executing pxor in ring 0\n");
	ring0_emulation_failure(int3 ? EMULATION_FAILURE_INT3 : EMULATION_FAILURE_SSE);
	console_puts(GUEST_TAG "ring-0 instruction completed\n");
	ring0_halt_forever();
}

struct mode {
	const char *name;
	void (*run)(const char *options);   /* options: the rest of the command line */
};

/* The network modes (net.c) drive virtio-net-pci from ring 3: pci.c, virtio.c, virtio_net.c. */
static const struct mode modes[] = {
	{ "counter", mode_counter },
	{ "reboot-test", mode_reboot_test },
	{ "triple-fault", mode_triple_fault },
	{ "emu-fail", mode_emu_fail },
	{ "echo", mode_echo },
	{ "sink", mode_sink },
	{ "source", mode_source },
	{ "mq-echo", mode_mq_echo },        /* mq.c: multiqueue, its own driver */
};

#define DEFAULT_MODE "counter"   /* for an empty command line */

static bool word_is(const char *word, size_t length, const char *name)
{
	size_t i = 0;
	while (i < length && name[i] && word[i] == name[i])
		i++;
	return i == length && !name[i];
}

void __attribute__((noreturn)) ring3_main(uint64_t start_info_paddr)
{
	console_puts(GUEST_TAG "ready\n");
	boot_info_read(start_info_paddr);

	const char *options = boot_info.cmdline, *word;
	size_t length;
	if (!cmdline_word(&options, &word, &length)) {
		word = DEFAULT_MODE;
		length = strlen(DEFAULT_MODE);
	}
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		if (word_is(word, length, modes[i].name))
			modes[i].run(options);
	fail("unknown mode", word, length);
}

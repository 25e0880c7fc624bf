/*
 * struct hvm_start_info, as the PVH boot ABI defines it
 * (xen/include/public/arch-x86/hvm/start_info.h). %ebx points at it on entry.
 */
#ifndef TESTGUEST_PVH_H
#define TESTGUEST_PVH_H

#include <stdint.h>

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	uint32_t magic;            /* 0x00: HVM_START_MAGIC */
	uint32_t version;          /* 0x04: 0, or >= 1 when the memmap fields exist */
	uint32_t flags;            /* 0x08 */
	uint32_t nr_modules;       /* 0x0c */
	uint64_t modlist_paddr;    /* 0x10 */
	uint64_t cmdline_paddr;    /* 0x18: NUL-terminated ASCII, or 0 */
	uint64_t rsdp_paddr;       /* 0x20 */
	uint64_t memmap_paddr;     /* 0x28: version >= 1 */
	uint32_t memmap_entries;   /* 0x30: version >= 1 */
	uint32_t reserved;         /* 0x34 */
};

struct hvm_memmap_table_entry {
	uint64_t addr;             /* 0x00 */
	uint64_t size;             /* 0x08 */
	uint32_t type;             /* 0x10: E820 type, 1 = RAM */
	uint32_t reserved;         /* 0x14 */
};

#define HVM_MEMMAP_TYPE_RAM 1

_Static_assert(sizeof(struct hvm_start_info) == 0x38, "hvm_start_info layout");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 0x18, "hvm_memmap_table_entry layout");

#endif

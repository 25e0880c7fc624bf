/*
 * PCI configuration space through mechanism #1 (address at 0xcf8, data at 0xcfc), bus 0
 * only, and the little the virtio driver needs on top: find a function, walk its
 * capability list, place its memory BARs below 4 GiB where ring 3 can reach them.
 */
#ifndef TESTGUEST_PCI_H
#define TESTGUEST_PCI_H

#include "hw.h"

/* Type-0 configuration header offsets. */
#define PCI_VENDOR_ID          0x00   /* 16 bits; 0xffff: no function here */
#define PCI_DEVICE_ID          0x02
#define PCI_COMMAND            0x04
#define PCI_STATUS             0x06
#define PCI_HEADER_TYPE        0x0e   /* bit 7: multi-function */
#define PCI_BAR0               0x10   /* six 32-bit BARs, 0x10..0x24 */
#define PCI_CAPABILITIES       0x34   /* first capability's offset */

#define PCI_COMMAND_MEMORY         (1u << 1)
#define PCI_COMMAND_BUS_MASTER     (1u << 2)
#define PCI_COMMAND_INTX_DISABLE   (1u << 10)
#define PCI_STATUS_CAPABILITIES    (1u << 4)
#define PCI_HEADER_MULTI_FUNCTION  0x80

#define PCI_BAR_IO                 0x1
#define PCI_BAR_MEMORY_TYPE_MASK   0x6
#define PCI_BAR_MEMORY_TYPE_64     0x4
#define PCI_BAR_MEMORY_ADDRESS_MASK 0xfffffff0u
#define PCI_BAR_COUNT              6

/* Every capability starts with these two bytes. */
#define PCI_CAP_ID             0
#define PCI_CAP_NEXT           1
#define PCI_CAP_ID_VENDOR      0x09

/* One function on bus 0. */
struct pci_function {
	uint8_t device;            /* 0..31 */
	uint8_t function;          /* 0..7 */
	uint16_t vendor_id, device_id;
};

uint8_t pci_read8(const struct pci_function *f, uint8_t offset);
uint16_t pci_read16(const struct pci_function *f, uint8_t offset);
uint32_t pci_read32(const struct pci_function *f, uint8_t offset);
void pci_write16(const struct pci_function *f, uint8_t offset, uint16_t value);
void pci_write32(const struct pci_function *f, uint8_t offset, uint32_t value);

/* Finds the first function on bus 0 with this vendor and one of `device_ids`. */
bool pci_find(uint16_t vendor_id, const uint16_t *device_ids, size_t device_id_count, struct pci_function *found);

/* Next capability with `id` after `previous` (0: from the start of the list); 0 when none. */
uint8_t pci_capability_next(const struct pci_function *f, uint8_t id, uint8_t previous);

/*
 * The guest-physical address of memory BAR `bar`, assigned first if the firmware left it
 * unassigned (0) or placed it where the guest's page tables do not reach (>= 4 GiB): the
 * new address comes from PCI_ASSIGN_BASE upward, clear of every other memory BAR on bus 0.
 * Returns 0 for an I/O BAR, a BAR index that is the upper half of a 64-bit BAR, or when
 * there is no room. Memory decoding is off while the BAR changes.
 */
#define PCI_ASSIGN_BASE   0xc0000000u   /* the uncached, user-accessible top GiB (layout.h) */
#define PCI_ASSIGN_LIMIT  0xfec00000u   /* IOAPIC, LAPIC, firmware above */
uint64_t pci_bar_address(const struct pci_function *f, unsigned bar);

#endif

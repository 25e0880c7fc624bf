/* PCI configuration mechanism #1 on bus 0 (see pci.h). Every port access is an exit:
 * this code runs once, at start-up. */
#include "pci.h"

#define PCI_CONFIG_ADDRESS  0xcf8
#define PCI_CONFIG_DATA     0xcfc
#define PCI_CONFIG_ENABLE   0x80000000u
#define PCI_DEVICES_PER_BUS 32
#define PCI_FUNCTIONS       8
#define PCI_CAPABILITY_LIST_LIMIT 48   /* a looping list ends here */

static inline void outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }
static inline uint32_t inl(uint16_t port)
{
	uint32_t value;
	__asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}
static inline uint16_t inw(uint16_t port)
{
	uint16_t value;
	__asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static void pci_select(uint8_t device, uint8_t function, uint8_t offset)
{
	outl(PCI_CONFIG_ADDRESS, PCI_CONFIG_ENABLE | (uint32_t)device << 11 | (uint32_t)function << 8 | (offset & 0xfc));
}

static uint32_t pci_read32_at(uint8_t device, uint8_t function, uint8_t offset)
{
	pci_select(device, function, offset);
	return inl(PCI_CONFIG_DATA);
}

uint32_t pci_read32(const struct pci_function *f, uint8_t offset)
{
	return pci_read32_at(f->device, f->function, offset);
}

uint16_t pci_read16(const struct pci_function *f, uint8_t offset)
{
	pci_select(f->device, f->function, offset);
	return inw((uint16_t)(PCI_CONFIG_DATA + (offset & 2)));
}

uint8_t pci_read8(const struct pci_function *f, uint8_t offset)
{
	pci_select(f->device, f->function, offset);
	return inb((uint16_t)(PCI_CONFIG_DATA + (offset & 3)));
}

void pci_write16(const struct pci_function *f, uint8_t offset, uint16_t value)
{
	pci_select(f->device, f->function, offset);
	outw((uint16_t)(PCI_CONFIG_DATA + (offset & 2)), value);
}

void pci_write32(const struct pci_function *f, uint8_t offset, uint32_t value)
{
	pci_select(f->device, f->function, offset);
	outl(PCI_CONFIG_DATA, value);
}

/* Calls `visit` for every function present on bus 0 until it returns true. */
static bool pci_for_each_function(bool (*visit)(const struct pci_function *f, void *context), void *context)
{
	for (uint8_t device = 0; device < PCI_DEVICES_PER_BUS; device++) {
		for (uint8_t function = 0; function < PCI_FUNCTIONS; function++) {
			uint32_t ids = pci_read32_at(device, function, PCI_VENDOR_ID);
			if ((ids & 0xffff) == 0xffff) {
				if (function == 0)
					break;                 /* no device: its other functions are absent too */
				continue;
			}
			struct pci_function f = { device, function, (uint16_t)ids, (uint16_t)(ids >> 16) };
			if (visit(&f, context))
				return true;
			if (function == 0 && !(pci_read8(&f, PCI_HEADER_TYPE) & PCI_HEADER_MULTI_FUNCTION))
				break;
		}
	}
	return false;
}

struct find_request {
	uint16_t vendor_id;
	const uint16_t *device_ids;
	size_t device_id_count;
	struct pci_function *found;
};

static bool find_visit(const struct pci_function *f, void *context)
{
	struct find_request *request = context;
	if (f->vendor_id != request->vendor_id)
		return false;
	for (size_t i = 0; i < request->device_id_count; i++) {
		if (f->device_id == request->device_ids[i]) {
			*request->found = *f;
			return true;
		}
	}
	return false;
}

bool pci_find(uint16_t vendor_id, const uint16_t *device_ids, size_t device_id_count, struct pci_function *found)
{
	struct find_request request = { vendor_id, device_ids, device_id_count, found };
	return pci_for_each_function(find_visit, &request);
}

uint8_t pci_capability_next(const struct pci_function *f, uint8_t id, uint8_t previous)
{
	uint8_t offset;
	if (previous) {
		offset = pci_read8(f, previous + PCI_CAP_NEXT);
	} else {
		if (!(pci_read16(f, PCI_STATUS) & PCI_STATUS_CAPABILITIES))
			return 0;
		offset = pci_read8(f, PCI_CAPABILITIES);
	}
	for (int hops = 0; offset >= 0x40 && hops < PCI_CAPABILITY_LIST_LIMIT; hops++) {
		offset &= 0xfc;
		if (pci_read8(f, offset + PCI_CAP_ID) == id)
			return offset;
		offset = pci_read8(f, offset + PCI_CAP_NEXT);
	}
	return 0;
}

/* --- memory BARs --- */

struct bar_info {
	uint64_t address;
	uint64_t size;               /* 0: not a memory BAR, or not implemented */
	bool is_64bit;
};

/* Reads a BAR and sizes it (all-ones probe, then the original value back). */
static struct bar_info bar_probe(const struct pci_function *f, unsigned bar)
{
	struct bar_info info = { 0, 0, false };
	uint8_t offset = (uint8_t)(PCI_BAR0 + 4 * bar);
	uint32_t low = pci_read32(f, offset);
	if (low & PCI_BAR_IO)
		return info;
	info.is_64bit = (low & PCI_BAR_MEMORY_TYPE_MASK) == PCI_BAR_MEMORY_TYPE_64;
	uint32_t high = info.is_64bit && bar + 1 < PCI_BAR_COUNT ? pci_read32(f, offset + 4) : 0;
	info.address = ((uint64_t)high << 32) | (low & PCI_BAR_MEMORY_ADDRESS_MASK);

	uint16_t command = pci_read16(f, PCI_COMMAND);
	pci_write16(f, PCI_COMMAND, command & (uint16_t)~PCI_COMMAND_MEMORY);
	pci_write32(f, offset, 0xffffffffu);
	uint64_t mask = pci_read32(f, offset) & PCI_BAR_MEMORY_ADDRESS_MASK;
	pci_write32(f, offset, low);
	if (info.is_64bit) {
		pci_write32(f, offset + 4, 0xffffffffu);
		mask |= (uint64_t)pci_read32(f, offset + 4) << 32;
		pci_write32(f, offset + 4, high);
	} else {
		mask |= 0xffffffff00000000ull;
	}
	pci_write16(f, PCI_COMMAND, command);
	info.size = mask ? ~mask + 1 : 0;
	return info;
}

struct range_search {
	uint64_t candidate, size;
	const struct pci_function *self;
	unsigned self_bar;
	bool moved;
};

/* Moves the candidate past any other memory BAR it overlaps. */
static bool range_visit(const struct pci_function *f, void *context)
{
	struct range_search *search = context;
	for (unsigned bar = 0; bar < PCI_BAR_COUNT; bar++) {
		struct bar_info other = bar_probe(f, bar);
		bool is_self = f->device == search->self->device && f->function == search->self->function && bar == search->self_bar;
		if (other.size && other.address && !is_self &&
		    other.address < search->candidate + search->size && search->candidate < other.address + other.size) {
			search->candidate = (other.address + other.size + search->size - 1) & ~(search->size - 1);
			search->moved = true;
		}
		if (other.is_64bit)
			bar++;
	}
	return false;
}

uint64_t pci_bar_address(const struct pci_function *f, unsigned bar)
{
	if (bar >= PCI_BAR_COUNT)
		return 0;
	/* the upper half of a 64-bit BAR is not a BAR of its own */
	for (unsigned lower = 0; lower < bar; lower++) {
		uint32_t value = pci_read32(f, (uint8_t)(PCI_BAR0 + 4 * lower));
		if (!(value & PCI_BAR_IO) && (value & PCI_BAR_MEMORY_TYPE_MASK) == PCI_BAR_MEMORY_TYPE_64) {
			if (lower + 1 == bar)
				return 0;
			lower++;
		}
	}
	/* Placed already, below 4 GiB: use it as it is (sizing would briefly turn decoding off). */
	uint8_t offset = (uint8_t)(PCI_BAR0 + 4 * bar);
	uint32_t low = pci_read32(f, offset);
	if (low & PCI_BAR_IO)
		return 0;
	bool is_64bit = (low & PCI_BAR_MEMORY_TYPE_MASK) == PCI_BAR_MEMORY_TYPE_64;
	uint32_t high = is_64bit && bar + 1 < PCI_BAR_COUNT ? pci_read32(f, offset + 4) : 0;
	if ((low & PCI_BAR_MEMORY_ADDRESS_MASK) && !high)
		return low & PCI_BAR_MEMORY_ADDRESS_MASK;

	struct bar_info info = bar_probe(f, bar);
	if (!info.size || info.size > PCI_ASSIGN_LIMIT - PCI_ASSIGN_BASE)
		return 0;

	/* First fit from PCI_ASSIGN_BASE, size-aligned, past every other assigned BAR. */
	struct range_search search = { (PCI_ASSIGN_BASE + info.size - 1) & ~(info.size - 1), info.size, f, bar, true };
	while (search.moved && search.candidate + search.size <= PCI_ASSIGN_LIMIT) {
		search.moved = false;
		pci_for_each_function(range_visit, &search);
	}
	if (search.candidate + search.size > PCI_ASSIGN_LIMIT)
		return 0;

	uint16_t command = pci_read16(f, PCI_COMMAND);
	pci_write16(f, PCI_COMMAND, command & (uint16_t)~PCI_COMMAND_MEMORY);
	uint32_t low_flags = pci_read32(f, offset) & ~PCI_BAR_MEMORY_ADDRESS_MASK;
	pci_write32(f, offset, (uint32_t)search.candidate | low_flags);
	if (info.is_64bit)
		pci_write32(f, offset + 4, 0);
	pci_write16(f, PCI_COMMAND, command);
	return search.candidate;
}

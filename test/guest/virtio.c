/* The modern virtio-pci transport (virtio 1.x, section 4.1) and virtqueue set-up. */
#include "guest.h"
#include "virtio.h"

static inline uint8_t mmio_read8(uintptr_t addr) { return *(volatile uint8_t *)addr; }
static inline void mmio_write8(uintptr_t addr, uint8_t value) { *(volatile uint8_t *)addr = value; }
static inline uint16_t mmio_read16(uintptr_t addr) { return *(volatile uint16_t *)addr; }
static inline void mmio_write16(uintptr_t addr, uint16_t value) { *(volatile uint16_t *)addr = value; }

/* 64-bit fields are written as two 32-bit halves, low first (spec 4.1.3.1). */
static void mmio_write64_split(uintptr_t addr, uint64_t value)
{
	mmio_write32(addr, (uint32_t)value);
	mmio_write32(addr + 4, (uint32_t)(value >> 32));
}

static void __attribute__((noreturn)) virtio_fail(const struct virtio_pci *vp, const char *what)
{
	struct line line;
	line_start(&line, "virtio-pci device at 00:");
	line_hex(&line, vp->pci.device);
	line_str(&line, ".");
	line_u64(&line, vp->pci.function);
	line_str(&line, ": ");
	line_str(&line, what);
	fail("network setup failed:", line.text, line.length);
}

/* The address of the structure a virtio capability describes, its BAR placed first. */
static uintptr_t capability_address(struct virtio_pci *vp, uint8_t cap, uint32_t *length)
{
	uint8_t bar = pci_read8(&vp->pci, cap + VIRTIO_PCI_CAP_BAR);
	uint32_t offset = pci_read32(&vp->pci, cap + VIRTIO_PCI_CAP_OFFSET);
	*length = pci_read32(&vp->pci, cap + VIRTIO_PCI_CAP_LENGTH);
	uint64_t base = pci_bar_address(&vp->pci, bar);
	if (!base)
		virtio_fail(vp, "a capability's BAR is not a memory BAR, or finds no room below 4 GiB");
	if (base + offset + *length > 0x100000000ull)
		virtio_fail(vp, "a capability's structure extends past 4 GiB");
	return (uintptr_t)(base + offset);
}

void virtio_pci_init(struct virtio_pci *vp, const struct pci_function *f)
{
	memset(vp, 0, sizeof *vp);
	vp->pci = *f;
	/* Take the first capability of each type (the spec's order of preference). */
	for (uint8_t cap = pci_capability_next(f, PCI_CAP_ID_VENDOR, 0); cap;
	     cap = pci_capability_next(f, PCI_CAP_ID_VENDOR, cap)) {
		uint8_t type = pci_read8(f, cap + VIRTIO_PCI_CAP_CFG_TYPE);
		uint32_t length;
		if (type == VIRTIO_PCI_CAP_COMMON_CFG && !vp->common_cfg) {
			vp->common_cfg = capability_address(vp, cap, &length);
		} else if (type == VIRTIO_PCI_CAP_NOTIFY_CFG && !vp->notify_base) {
			vp->notify_base = capability_address(vp, cap, &length);
			vp->notify_off_multiplier = pci_read32(f, cap + VIRTIO_PCI_NOTIFY_CAP_MULTIPLIER);
		} else if (type == VIRTIO_PCI_CAP_ISR_CFG && !vp->isr) {
			vp->isr = capability_address(vp, cap, &length);
		} else if (type == VIRTIO_PCI_CAP_DEVICE_CFG && !vp->device_cfg) {
			vp->device_cfg = capability_address(vp, cap, &vp->device_cfg_length);
		}
	}
	if (!vp->common_cfg || !vp->notify_base)
		virtio_fail(vp, "no common or notify configuration capability (not a modern virtio-pci device)");

	/* Memory space for the BARs, bus mastering for the rings; no INTx, we poll. */
	uint16_t command = pci_read16(f, PCI_COMMAND);
	pci_write16(f, PCI_COMMAND, command | PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER | PCI_COMMAND_INTX_DISABLE);

	virtio_status_set(vp, 0);                  /* reset; it completes when status reads 0 */
	for (int tries = 0; virtio_status(vp) != 0; tries++)
		if (tries > 1000)
			virtio_fail(vp, "device status does not read 0 after a reset");
	virtio_status_set(vp, VIRTIO_STATUS_ACKNOWLEDGE);
	virtio_status_set(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	mmio_write16(vp->common_cfg + VIRTIO_COMMON_MSIX_CONFIG, VIRTIO_MSI_NO_VECTOR);
}

uint8_t virtio_status(const struct virtio_pci *vp)
{
	return mmio_read8(vp->common_cfg + VIRTIO_COMMON_DEVICE_STATUS);
}

void virtio_status_set(struct virtio_pci *vp, uint8_t status)
{
	mmio_write8(vp->common_cfg + VIRTIO_COMMON_DEVICE_STATUS, status);
}

uint64_t virtio_device_features(struct virtio_pci *vp)
{
	uint64_t features = 0;
	for (uint32_t half = 0; half < 2; half++) {
		mmio_write32(vp->common_cfg + VIRTIO_COMMON_DEVICE_FEATURE_SELECT, half);
		features |= (uint64_t)mmio_read32(vp->common_cfg + VIRTIO_COMMON_DEVICE_FEATURE) << (32 * half);
	}
	return features;
}

bool virtio_features_accept(struct virtio_pci *vp, uint64_t features)
{
	for (uint32_t half = 0; half < 2; half++) {
		mmio_write32(vp->common_cfg + VIRTIO_COMMON_DRIVER_FEATURE_SELECT, half);
		mmio_write32(vp->common_cfg + VIRTIO_COMMON_DRIVER_FEATURE, (uint32_t)(features >> (32 * half)));
	}
	uint8_t status = virtio_status(vp);
	virtio_status_set(vp, status | VIRTIO_STATUS_FEATURES_OK);
	return (virtio_status(vp) & VIRTIO_STATUS_FEATURES_OK) != 0;
}

void virtio_queue_setup(struct virtio_pci *vp, struct virtq *q, uint16_t index, uint16_t max_size)
{
	uintptr_t cfg = vp->common_cfg;
	if (index >= mmio_read16(cfg + VIRTIO_COMMON_NUM_QUEUES))
		virtio_fail(vp, "the device has fewer queues than the driver needs");
	mmio_write16(cfg + VIRTIO_COMMON_QUEUE_SELECT, index);
	uint16_t size = mmio_read16(cfg + VIRTIO_COMMON_QUEUE_SIZE);
	if (size == 0)
		virtio_fail(vp, "a queue the driver needs is not available (size 0)");
	if (size > max_size)
		size = max_size;
	if (size & (size - 1))
		virtio_fail(vp, "queue size is not a power of two");

	memset(q, 0, sizeof *q);
	q->index = index;
	q->size = size;
	/* Alignments from spec 2.6: descriptors 16, available ring 2, used ring 4; pages here. */
	q->desc = virtio_dma_alloc(sizeof(struct virtq_desc) * size, 4096);
	q->avail = virtio_dma_alloc(sizeof(struct virtq_avail) + sizeof(uint16_t) * (size + 1u), 4096);
	q->used = virtio_dma_alloc(sizeof(struct virtq_used) + sizeof(struct virtq_used_elem) * size + sizeof(uint16_t), 4096);
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;

	uint16_t notify_off = mmio_read16(cfg + VIRTIO_COMMON_QUEUE_NOTIFY_OFF);
	q->notify = (volatile uint16_t *)(vp->notify_base + (uintptr_t)notify_off * vp->notify_off_multiplier);

	mmio_write16(cfg + VIRTIO_COMMON_QUEUE_SIZE, size);
	mmio_write16(cfg + VIRTIO_COMMON_QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
	mmio_write64_split(cfg + VIRTIO_COMMON_QUEUE_DESC, (uintptr_t)q->desc);
	mmio_write64_split(cfg + VIRTIO_COMMON_QUEUE_DRIVER, (uintptr_t)q->avail);
	mmio_write64_split(cfg + VIRTIO_COMMON_QUEUE_DEVICE, (uintptr_t)q->used);
	mmio_write16(cfg + VIRTIO_COMMON_QUEUE_ENABLE, 1);
}

/* --- guest RAM for rings and buffers --- */

extern char image_end[];                       /* linker.ld */
static uintptr_t dma_next;

void *virtio_dma_alloc(size_t size, size_t align)
{
	if (!dma_next)
		dma_next = (uintptr_t)image_end;
	uintptr_t start = (dma_next + align - 1) & ~(uintptr_t)(align - 1);
	uintptr_t end = start + size;
	if (boot_info.ram_top && end > boot_info.ram_top) {
		static const char reason[] = "past the end of RAM (give the guest more memory)";
		fail("network buffers do not fit:", reason, sizeof reason - 1);
	}
	/* The command line is read for as long as the mode runs: never hand out its bytes. */
	uintptr_t cmdline = (uintptr_t)boot_info.cmdline;
	if (cmdline + strlen(boot_info.cmdline) >= start && cmdline < end) {
		static const char reason[] = "the command line lies past the image, where the buffers go";
		fail("network buffers do not fit:", reason, sizeof reason - 1);
	}
	dma_next = end;
	memset((void *)start, 0, size);
	return (void *)start;
}

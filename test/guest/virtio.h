/*
 * Virtio 1.0 over PCI, modern interface only (virtio spec 1.x, section 4.1), and split
 * virtqueues (section 2.6), driven by polling from ring 3: no interrupts are used, the
 * driver asks the device not to send any and reads the used rings itself.
 */
#ifndef TESTGUEST_VIRTIO_H
#define TESTGUEST_VIRTIO_H

#include "pci.h"

#define VIRTIO_PCI_VENDOR_ID          0x1af4
#define VIRTIO_PCI_DEVICE_ID_MODERN(virtio_id) (0x1040 + (virtio_id))
#define VIRTIO_ID_NET                 1
#define VIRTIO_PCI_DEVICE_ID_NET_TRANSITIONAL 0x1000

/* Vendor-specific PCI capability describing where one structure lives (virtio_pci_cap). */
#define VIRTIO_PCI_CAP_CFG_TYPE       3      /* u8 */
#define VIRTIO_PCI_CAP_BAR            4      /* u8 */
#define VIRTIO_PCI_CAP_OFFSET         8      /* le32, within the BAR */
#define VIRTIO_PCI_CAP_LENGTH         12     /* le32 */
#define VIRTIO_PCI_NOTIFY_CAP_MULTIPLIER 16  /* le32, notify capability only */
#define VIRTIO_PCI_CAP_COMMON_CFG     1
#define VIRTIO_PCI_CAP_NOTIFY_CFG     2
#define VIRTIO_PCI_CAP_ISR_CFG        3
#define VIRTIO_PCI_CAP_DEVICE_CFG     4

/* struct virtio_pci_common_cfg */
#define VIRTIO_COMMON_DEVICE_FEATURE_SELECT 0x00   /* le32 */
#define VIRTIO_COMMON_DEVICE_FEATURE        0x04   /* le32 */
#define VIRTIO_COMMON_DRIVER_FEATURE_SELECT 0x08   /* le32 */
#define VIRTIO_COMMON_DRIVER_FEATURE        0x0c   /* le32 */
#define VIRTIO_COMMON_MSIX_CONFIG           0x10   /* le16 */
#define VIRTIO_COMMON_NUM_QUEUES            0x12   /* le16 */
#define VIRTIO_COMMON_DEVICE_STATUS         0x14   /* u8 */
#define VIRTIO_COMMON_CONFIG_GENERATION     0x15   /* u8 */
#define VIRTIO_COMMON_QUEUE_SELECT          0x16   /* le16 */
#define VIRTIO_COMMON_QUEUE_SIZE            0x18   /* le16 */
#define VIRTIO_COMMON_QUEUE_MSIX_VECTOR     0x1a   /* le16 */
#define VIRTIO_COMMON_QUEUE_ENABLE          0x1c   /* le16 */
#define VIRTIO_COMMON_QUEUE_NOTIFY_OFF      0x1e   /* le16 */
#define VIRTIO_COMMON_QUEUE_DESC            0x20   /* le64 */
#define VIRTIO_COMMON_QUEUE_DRIVER          0x28   /* le64: the available ring */
#define VIRTIO_COMMON_QUEUE_DEVICE          0x30   /* le64: the used ring */
#define VIRTIO_MSI_NO_VECTOR                0xffff

/* Device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE   1
#define VIRTIO_STATUS_DRIVER        2
#define VIRTIO_STATUS_DRIVER_OK     4
#define VIRTIO_STATUS_FEATURES_OK   8
#define VIRTIO_STATUS_NEEDS_RESET   64
#define VIRTIO_STATUS_FAILED        128

#define VIRTIO_F_VERSION_1          32

/* Split virtqueue layout (little-endian; x86 is too). */
struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
#define VIRTQ_DESC_F_NEXT   1
#define VIRTQ_DESC_F_WRITE  2            /* device writes this buffer (RX) */

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];                 /* queue size entries, then le16 used_event */
};
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_used_elem {
	uint32_t id;                     /* head descriptor of the chain */
	uint32_t len;                    /* bytes the device wrote */
};
struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[];   /* queue size entries, then le16 avail_event */
};
#define VIRTQ_USED_F_NO_NOTIFY 1

_Static_assert(sizeof(struct virtq_desc) == 16, "virtq_desc layout");
_Static_assert(sizeof(struct virtq_used_elem) == 8, "virtq_used_elem layout");

/* The modern transport: where the device's structures are mapped. */
struct virtio_pci {
	struct pci_function pci;
	uintptr_t common_cfg;
	uintptr_t notify_base;
	uint32_t notify_off_multiplier;
	uintptr_t isr;
	uintptr_t device_cfg;
	uint32_t device_cfg_length;
};

/*
 * One split virtqueue. The driver keeps shadow indices and publishes the available index
 * once per batch; the device is notified only when it asks for it (VIRTQ_USED_F_NO_NOTIFY
 * clear), because every notification is an MMIO write and thus a VM exit.
 */
struct virtq {
	uint16_t index;                  /* queue number on the device */
	uint16_t size;                   /* power of two */
	struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	volatile uint16_t *notify;
	uint16_t next_avail;             /* shadow of avail->idx, not yet published */
	uint16_t published_avail;        /* what avail->idx holds */
	uint16_t next_used;              /* next used entry to consume */
	uint64_t notifications;          /* doorbell writes, for the curious */
};

/* Transport: finds the capabilities, maps the BARs, resets the device. Fails the guest
 * with a message naming what is missing. */
void virtio_pci_init(struct virtio_pci *vp, const struct pci_function *f);
uint8_t virtio_status(const struct virtio_pci *vp);
void virtio_status_set(struct virtio_pci *vp, uint8_t status);
uint64_t virtio_device_features(struct virtio_pci *vp);
/* Writes the driver features and sets FEATURES_OK; false if the device refused them. */
bool virtio_features_accept(struct virtio_pci *vp, uint64_t features);
/* Sets up queue `index` with min(device maximum, max_size) entries in zeroed memory. */
void virtio_queue_setup(struct virtio_pci *vp, struct virtq *q, uint16_t index, uint16_t max_size);

/* Bytes of guest RAM for rings and buffers: a bump allocator past the image, zeroed. */
void *virtio_dma_alloc(size_t size, size_t align);

static inline void compiler_barrier(void) { __asm__ volatile("" : : : "memory"); }
/* Store-load ordering: the avail index must be visible before we read the device's
 * notification flag (spec 2.7.7.2), which x86 alone does not guarantee. */
static inline void memory_barrier(void) { __asm__ volatile("mfence" : : : "memory"); }

static inline void virtq_push(struct virtq *q, uint16_t descriptor)
{
	q->avail->ring[q->next_avail & (q->size - 1)] = descriptor;
	q->next_avail++;
}

/* Publishes what virtq_push added and rings the doorbell if the device wants it. */
static inline void virtq_publish(struct virtq *q)
{
	if (q->next_avail == q->published_avail)
		return;
	compiler_barrier();                  /* ring entries before the index (x86: stores stay ordered) */
	q->avail->idx = q->next_avail;
	q->published_avail = q->next_avail;
	memory_barrier();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY)) {
		*q->notify = q->index;
		q->notifications++;
	}
}

static inline uint16_t virtq_used_pending(const struct virtq *q)
{
	return (uint16_t)(q->used->idx - q->next_used);
}

/* The next used entry; call only when virtq_used_pending() > 0. */
static inline struct virtq_used_elem virtq_pop_used(struct virtq *q)
{
	compiler_barrier();                  /* the entry after the index (x86: loads stay ordered) */
	volatile struct virtq_used_elem *e = &q->used->ring[q->next_used & (q->size - 1)];
	struct virtq_used_elem elem = { e->id, e->len };
	q->next_used++;
	return elem;
}

#endif

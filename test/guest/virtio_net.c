/* The virtio-net device (virtio spec 5.1) on the modern PCI transport. See virtio_net.h. */
#include "guest.h"
#include "virtio.h"
#include "virtio_net.h"

#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_STATUS     16
#define VIRTIO_NET_CONFIG_MAC   0          /* u8[6] in the device configuration */
#define VIRTIO_NET_CONFIG_STATUS 6         /* le16, valid with VIRTIO_NET_F_STATUS */
#define VIRTIO_NET_S_LINK_UP    1

/* struct virtio_net_hdr with VERSION_1: num_buffers is always there; all zero on TX
 * (no checksum offload, no GSO). */
#define VIRTIO_NET_HEADER_LENGTH 12

#define RX_QUEUE  0
#define TX_QUEUE  1
#define QUEUE_SIZE_MAX 256
#define BUFFER_SIZE 2048

_Static_assert(VIRTIO_NET_FRAME_MAX == BUFFER_SIZE - VIRTIO_NET_HEADER_LENGTH, "frame room");

static struct {
	struct virtio_pci transport;
	struct virtq rx, tx;
	uint8_t *rx_buffers, *tx_buffers;          /* size * BUFFER_SIZE each */
	uint16_t tx_free[QUEUE_SIZE_MAX];          /* descriptor ids not with the device */
	uint16_t tx_free_count;
	uint8_t mac[ETHERNET_ADDRESS_LENGTH];
	bool has_status;                           /* VIRTIO_NET_F_STATUS negotiated */
} nic;

static const uint16_t net_device_ids[] = {
	VIRTIO_PCI_DEVICE_ID_MODERN(VIRTIO_ID_NET),
	VIRTIO_PCI_DEVICE_ID_NET_TRANSITIONAL,
};

static void __attribute__((noreturn)) net_fail(const char *reason)
{
	fail("network setup failed:", reason, strlen(reason));
}

/* The MAC from the device configuration, re-read if it changed while we read it. */
static void read_device_mac(void)
{
	volatile uint8_t *generation = (volatile uint8_t *)(nic.transport.common_cfg + VIRTIO_COMMON_CONFIG_GENERATION);
	volatile uint8_t *config = (volatile uint8_t *)nic.transport.device_cfg;
	uint8_t before, after;
	do {
		before = *generation;
		for (int i = 0; i < ETHERNET_ADDRESS_LENGTH; i++)
			nic.mac[i] = config[VIRTIO_NET_CONFIG_MAC + i];
		after = *generation;
	} while (before != after);
}

void virtio_net_init(const uint8_t *mac_override)
{
	struct pci_function f;
	if (!pci_find(VIRTIO_PCI_VENDOR_ID, net_device_ids, sizeof net_device_ids / sizeof net_device_ids[0], &f))
		net_fail("no virtio-net PCI function (1af4:1041 or 1af4:1000) on bus 0");
	struct virtio_pci *vp = &nic.transport;
	virtio_pci_init(vp, &f);

	uint64_t offered = virtio_device_features(vp);
	if (!(offered & (1ull << VIRTIO_F_VERSION_1)))
		net_fail("the device does not offer VIRTIO_F_VERSION_1 (legacy-only device)");
	uint64_t wanted = (1ull << VIRTIO_F_VERSION_1) | (offered & (1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS));
	if (!virtio_features_accept(vp, wanted))
		net_fail("the device refused the features VERSION_1, MAC and STATUS (FEATURES_OK did not stick)");
	nic.has_status = (wanted & (1ull << VIRTIO_NET_F_STATUS)) && vp->device_cfg;

	virtio_queue_setup(vp, &nic.rx, RX_QUEUE, QUEUE_SIZE_MAX);
	virtio_queue_setup(vp, &nic.tx, TX_QUEUE, QUEUE_SIZE_MAX);
	nic.rx_buffers = virtio_dma_alloc((size_t)nic.rx.size * BUFFER_SIZE, 4096);
	nic.tx_buffers = virtio_dma_alloc((size_t)nic.tx.size * BUFFER_SIZE, 4096);

	/* Descriptors never change address: RX ones are device-writable and whole, TX ones
	 * get their length when queued. */
	for (uint16_t i = 0; i < nic.rx.size; i++) {
		nic.rx.desc[i].addr = (uintptr_t)(nic.rx_buffers + (size_t)i * BUFFER_SIZE);
		nic.rx.desc[i].len = BUFFER_SIZE;
		nic.rx.desc[i].flags = VIRTQ_DESC_F_WRITE;
	}
	for (uint16_t i = 0; i < nic.tx.size; i++) {
		nic.tx.desc[i].addr = (uintptr_t)(nic.tx_buffers + (size_t)i * BUFFER_SIZE);
		nic.tx_free[i] = (uint16_t)(nic.tx.size - 1 - i);   /* hand out 0, 1, 2, ... first */
	}
	nic.tx_free_count = nic.tx.size;

	if (mac_override)
		memcpy(nic.mac, mac_override, ETHERNET_ADDRESS_LENGTH);
	else if ((offered & (1ull << VIRTIO_NET_F_MAC)) && vp->device_cfg)
		read_device_mac();
	else
		net_fail("the device has no MAC address (VIRTIO_NET_F_MAC): give one with mac=");

	virtio_status_set(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	if (virtio_status(vp) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		net_fail("the device reports NEEDS_RESET or FAILED right after DRIVER_OK");

	for (uint16_t i = 0; i < nic.rx.size; i++)
		virtq_push(&nic.rx, i);
	virtq_publish(&nic.rx);

	struct line line;
	line_start(&line, GUEST_TAG "virtio-net at pci 00:");
	line_u64(&line, f.device);
	line_str(&line, ".");
	line_u64(&line, f.function);
	line_str(&line, " id 1af4:");
	for (int shift = 12; shift >= 0; shift -= 4) {
		char digit[2] = { "0123456789abcdef"[(f.device_id >> shift) & 0xf], 0 };
		line_str(&line, digit);
	}
	line_str(&line, " common_cfg ");
	line_hex(&line, vp->common_cfg);
	line_str(&line, " notify ");
	line_hex(&line, vp->notify_base);
	line_str(&line, " queues ");
	line_u64(&line, nic.rx.size);
	line_str(&line, "/");
	line_u64(&line, nic.tx.size);
	line_send(&line);
}

void virtio_net_mac(uint8_t mac[ETHERNET_ADDRESS_LENGTH])
{
	memcpy(mac, nic.mac, ETHERNET_ADDRESS_LENGTH);
}

size_t virtio_net_receive(virtio_net_receive_handler handle, void *context, size_t budget)
{
	size_t handled = 0;
	uint16_t pending = virtq_used_pending(&nic.rx);
	if (pending > budget)
		pending = (uint16_t)budget;
	for (; handled < pending; handled++) {
		struct virtq_used_elem used = virtq_pop_used(&nic.rx);
		if (used.id >= nic.rx.size)
			net_fail("the device returned an RX descriptor id beyond the queue size");
		uint16_t id = (uint16_t)used.id;
		if (used.len > VIRTIO_NET_HEADER_LENGTH && used.len <= BUFFER_SIZE)
			handle(nic.rx_buffers + (size_t)id * BUFFER_SIZE + VIRTIO_NET_HEADER_LENGTH,
			       used.len - VIRTIO_NET_HEADER_LENGTH, context);
		virtq_push(&nic.rx, id);
	}
	virtq_publish(&nic.rx);
	return handled;
}

/* Takes back the TX buffers the device has finished with. */
static void transmit_reclaim(void)
{
	while (virtq_used_pending(&nic.tx)) {
		struct virtq_used_elem used = virtq_pop_used(&nic.tx);
		if (used.id < nic.tx.size && nic.tx_free_count < nic.tx.size)
			nic.tx_free[nic.tx_free_count++] = (uint16_t)used.id;
	}
}

size_t virtio_net_transmit_room(void)
{
	transmit_reclaim();
	return nic.tx_free_count;
}

uint8_t *virtio_net_transmit_buffer(void)
{
	if (!nic.tx_free_count)
		transmit_reclaim();
	if (!nic.tx_free_count)
		return NULL;
	uint16_t id = nic.tx_free[nic.tx_free_count - 1];
	uint8_t *buffer = nic.tx_buffers + (size_t)id * BUFFER_SIZE;
	memset(buffer, 0, VIRTIO_NET_HEADER_LENGTH);
	return buffer + VIRTIO_NET_HEADER_LENGTH;
}

void virtio_net_transmit_queue(size_t length)
{
	uint16_t id = nic.tx_free[--nic.tx_free_count];
	nic.tx.desc[id].len = (uint32_t)(VIRTIO_NET_HEADER_LENGTH + length);
	nic.tx.desc[id].flags = 0;
	virtq_push(&nic.tx, id);
}

void virtio_net_transmit_flush(void)
{
	virtq_publish(&nic.tx);
}

bool virtio_net_link_up(void)
{
	if (!nic.has_status)
		return true;                       /* without STATUS the link is always up (spec 5.1.4) */
	volatile uint16_t *status = (volatile uint16_t *)(nic.transport.device_cfg + VIRTIO_NET_CONFIG_STATUS);
	return (*status & VIRTIO_NET_S_LINK_UP) != 0;
}

struct virtio_net_counters virtio_net_counters(void)
{
	struct virtio_net_counters c = { nic.rx.notifications, nic.tx.notifications };
	return c;
}

/*
 * Mode `mq-echo`: virtio-net multiqueue (VIRTIO_NET_F_MQ, spec 5.1.6.5.5) with its own
 * small driver, so that a hypervisor's queue pairs — and the TAP queues behind them — can
 * be seen carrying traffic. The single-queue driver (virtio_net.c) stays as it is.
 *
 *   mq-echo ip=A.B.C.D [pairs=2] [report_ms=1000]
 *
 * Negotiates VERSION_1, MAC, CTRL_VQ and MQ, sets up `pairs` queue pairs (at most the
 * device's max_virtqueue_pairs and MQ_MAX_PAIRS) and enables them with
 * VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET. Then, on every pair, it answers ARP requests for its
 * address and echoes UDP datagrams to port 7 on the pair they arrived on: addresses and
 * ports swapped, which leaves the IPv4 and UDP checksums valid. Prints
 * `mq pairs P rx R0 R1 .. tx T0 T1 ..` (frames per pair) every report_ms.
 */
#include "guest.h"
#include "net.h"
#include "virtio.h"
#include "virtio_net.h"

#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_CTRL_VQ    17
#define VIRTIO_NET_F_MQ         22
#define VIRTIO_NET_CONFIG_MAC   0          /* u8[6] */
#define VIRTIO_NET_CONFIG_MAX_PAIRS 8      /* le16 max_virtqueue_pairs, valid with MQ */
#define VIRTIO_NET_CTRL_MQ      4
#define VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 0
#define VIRTIO_NET_OK           0
#define VIRTIO_NET_HEADER_LENGTH 12

#define MQ_MAX_PAIRS   4
#define MQ_QUEUE_SIZE  256
#define MQ_BUFFER_SIZE 2048
#define MQ_BUDGET      64
#define MQ_POWER_POLL_MS 10
#define CTRL_TIMEOUT_MS  1000

struct mq_pair {
	struct virtq rx, tx;
	uint8_t *rx_buffers, *tx_buffers;
	uint16_t tx_free[MQ_QUEUE_SIZE];
	uint16_t tx_free_count;
	uint64_t rx_frames, tx_frames;
};

static struct {
	struct virtio_pci transport;
	struct mq_pair pair[MQ_MAX_PAIRS];
	unsigned pairs;
	struct virtq ctrl;
	uint8_t *ctrl_buffer;                  /* request (4 bytes) then the ack byte */
	uint8_t mac[ETHERNET_ADDRESS_LENGTH];
	uint8_t ip[4];
} mq;

static void __attribute__((noreturn)) mq_fail(const char *reason)
{
	fail("network setup failed:", reason, strlen(reason));
}

static void pair_setup(struct mq_pair *p, unsigned index)
{
	virtio_queue_setup(&mq.transport, &p->rx, (uint16_t)(2 * index), MQ_QUEUE_SIZE);
	virtio_queue_setup(&mq.transport, &p->tx, (uint16_t)(2 * index + 1), MQ_QUEUE_SIZE);
	p->rx_buffers = virtio_dma_alloc((size_t)p->rx.size * MQ_BUFFER_SIZE, 4096);
	p->tx_buffers = virtio_dma_alloc((size_t)p->tx.size * MQ_BUFFER_SIZE, 4096);
	for (uint16_t i = 0; i < p->rx.size; i++) {
		p->rx.desc[i].addr = (uintptr_t)(p->rx_buffers + (size_t)i * MQ_BUFFER_SIZE);
		p->rx.desc[i].len = MQ_BUFFER_SIZE;
		p->rx.desc[i].flags = VIRTQ_DESC_F_WRITE;
	}
	for (uint16_t i = 0; i < p->tx.size; i++) {
		p->tx.desc[i].addr = (uintptr_t)(p->tx_buffers + (size_t)i * MQ_BUFFER_SIZE);
		p->tx_free[i] = i;
	}
	p->tx_free_count = p->tx.size;
}

/* One control command, waited for by polling the used ring. */
static uint8_t ctrl_command(uint8_t class, uint8_t command, uint16_t value)
{
	uint8_t *request = mq.ctrl_buffer;
	request[0] = class;
	request[1] = command;
	request[2] = (uint8_t)value;
	request[3] = (uint8_t)(value >> 8);
	request[4] = 0xff;                     /* the ack, overwritten by the device */
	mq.ctrl.desc[0].addr = (uintptr_t)request;
	mq.ctrl.desc[0].len = 4;
	mq.ctrl.desc[0].flags = VIRTQ_DESC_F_NEXT;
	mq.ctrl.desc[0].next = 1;
	mq.ctrl.desc[1].addr = (uintptr_t)(request + 4);
	mq.ctrl.desc[1].len = 1;
	mq.ctrl.desc[1].flags = VIRTQ_DESC_F_WRITE;
	virtq_push(&mq.ctrl, 0);
	virtq_publish(&mq.ctrl);
	uint64_t deadline = rdtsc() + tsc_from_ms(CTRL_TIMEOUT_MS);
	while (!virtq_used_pending(&mq.ctrl)) {
		if (rdtsc() > deadline)
			mq_fail("the device did not answer a control-queue command within 1 s");
		cpu_relax();
	}
	virtq_pop_used(&mq.ctrl);
	return *(volatile uint8_t *)(request + 4);
}

static void mq_init(unsigned wanted_pairs)
{
	static const uint16_t ids[] = { VIRTIO_PCI_DEVICE_ID_MODERN(VIRTIO_ID_NET), VIRTIO_PCI_DEVICE_ID_NET_TRANSITIONAL };
	struct pci_function f;
	if (!pci_find(VIRTIO_PCI_VENDOR_ID, ids, 2, &f))
		mq_fail("no virtio-net PCI function (1af4:1041 or 1af4:1000) on bus 0");
	struct virtio_pci *vp = &mq.transport;
	virtio_pci_init(vp, &f);
	uint64_t need = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_CTRL_VQ | 1ull << VIRTIO_NET_F_MQ;
	if ((virtio_device_features(vp) & need) != need || !vp->device_cfg)
		mq_fail("mq-echo needs a device with VERSION_1, MAC, CTRL_VQ and MQ (start it with mq=on and queues>1)");
	if (!virtio_features_accept(vp, need))
		mq_fail("the device refused VERSION_1, MAC, CTRL_VQ and MQ");
	volatile uint8_t *config = (volatile uint8_t *)vp->device_cfg;
	unsigned max_pairs = config[VIRTIO_NET_CONFIG_MAX_PAIRS] | config[VIRTIO_NET_CONFIG_MAX_PAIRS + 1] << 8;
	for (int i = 0; i < ETHERNET_ADDRESS_LENGTH; i++)
		mq.mac[i] = config[VIRTIO_NET_CONFIG_MAC + i];
	mq.pairs = wanted_pairs;
	if (mq.pairs > max_pairs)
		mq.pairs = max_pairs;
	if (mq.pairs > MQ_MAX_PAIRS)
		mq.pairs = MQ_MAX_PAIRS;
	if (mq.pairs < 1)
		mq_fail("the device reports max_virtqueue_pairs 0");
	for (unsigned i = 0; i < mq.pairs; i++)
		pair_setup(&mq.pair[i], i);
	/* The control queue follows the device's maximum number of pairs, not the ones we use. */
	virtio_queue_setup(vp, &mq.ctrl, (uint16_t)(2 * max_pairs), 16);
	mq.ctrl_buffer = virtio_dma_alloc(64, 64);
	virtio_status_set(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	if (virtio_status(vp) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		mq_fail("the device reports NEEDS_RESET or FAILED right after DRIVER_OK");
	for (unsigned i = 0; i < mq.pairs; i++) {
		struct mq_pair *p = &mq.pair[i];
		for (uint16_t d = 0; d < p->rx.size; d++)
			virtq_push(&p->rx, d);
		virtq_publish(&p->rx);
	}
	if (ctrl_command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, (uint16_t)mq.pairs) != VIRTIO_NET_OK)
		mq_fail("the device refused VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET");

	struct line line;
	line_start(&line, GUEST_TAG "mq up pairs ");
	line_u64(&line, mq.pairs);
	line_str(&line, " of ");
	line_u64(&line, max_pairs);
	line_send(&line);
}

static void tx_reclaim(struct mq_pair *p)
{
	while (virtq_used_pending(&p->tx)) {
		struct virtq_used_elem used = virtq_pop_used(&p->tx);
		if (used.id < p->tx.size && p->tx_free_count < p->tx.size)
			p->tx_free[p->tx_free_count++] = (uint16_t)used.id;
	}
}

/* Sends `length` bytes of `frame` on pair p (dropped when every TX buffer is busy). */
static void tx_frame(struct mq_pair *p, const uint8_t *frame, size_t length)
{
	if (!p->tx_free_count)
		tx_reclaim(p);
	if (!p->tx_free_count)
		return;
	uint16_t id = p->tx_free[--p->tx_free_count];
	uint8_t *buffer = p->tx_buffers + (size_t)id * MQ_BUFFER_SIZE;
	memset(buffer, 0, VIRTIO_NET_HEADER_LENGTH);
	memcpy(buffer + VIRTIO_NET_HEADER_LENGTH, frame, length);
	p->tx.desc[id].len = (uint32_t)(VIRTIO_NET_HEADER_LENGTH + length);
	p->tx.desc[id].flags = 0;
	virtq_push(&p->tx, id);
	p->tx_frames++;
}

static bool is_our_ip(const uint8_t *address)
{
	return address[0] == mq.ip[0] && address[1] == mq.ip[1] && address[2] == mq.ip[2] && address[3] == mq.ip[3];
}

static void swap_bytes(uint8_t *a, uint8_t *b, size_t length)
{
	for (size_t i = 0; i < length; i++) {
		uint8_t t = a[i];
		a[i] = b[i];
		b[i] = t;
	}
}

/* Answers in place (the RX buffer is ours until given back), then copies to a TX buffer. */
static void frame_input(struct mq_pair *p, uint8_t *frame, size_t length)
{
	p->rx_frames++;
	if (length < ETH_HEADER_LENGTH)
		return;
	uint16_t type = load_be16(frame + ETH_TYPE);
	if (type == ETH_TYPE_ARP && length >= ETH_HEADER_LENGTH + ARP_LENGTH) {
		uint8_t *arp = frame + ETH_HEADER_LENGTH;
		if (load_be16(arp + ARP_OPER) != ARP_OPER_REQUEST || !is_our_ip(arp + ARP_TPA))
			return;
		memcpy(frame + ETH_DST, arp + ARP_SHA, ETHERNET_ADDRESS_LENGTH);
		memcpy(frame + ETH_SRC, mq.mac, ETHERNET_ADDRESS_LENGTH);
		store_be16(arp + ARP_OPER, ARP_OPER_REPLY);
		memcpy(arp + ARP_THA, arp + ARP_SHA, ETHERNET_ADDRESS_LENGTH + 4);   /* THA, TPA <- SHA, SPA */
		memcpy(arp + ARP_SHA, mq.mac, ETHERNET_ADDRESS_LENGTH);
		memcpy(arp + ARP_SPA, mq.ip, 4);
		tx_frame(p, frame, ETH_HEADER_LENGTH + ARP_LENGTH);
		return;
	}
	if (type != ETH_TYPE_IPV4 || length < ETH_HEADER_LENGTH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH)
		return;
	uint8_t *ip = frame + ETH_HEADER_LENGTH;
	size_t header_length = (size_t)(ip[IPV4_VERSION_IHL] & 0xf) * 4;
	if (ip[IPV4_VERSION_IHL] >> 4 != 4 || header_length < IPV4_HEADER_LENGTH || ip[IPV4_PROTOCOL] != IP_PROTOCOL_UDP ||
	    !is_our_ip(ip + IPV4_DST) || length < ETH_HEADER_LENGTH + header_length + UDP_HEADER_LENGTH)
		return;
	uint8_t *udp = ip + header_length;
	if (load_be16(udp + UDP_DST_PORT) != UDP_ECHO_PORT)
		return;
	swap_bytes(frame + ETH_DST, frame + ETH_SRC, ETHERNET_ADDRESS_LENGTH);
	swap_bytes(ip + IPV4_SRC, ip + IPV4_DST, 4);
	swap_bytes(udp + UDP_SRC_PORT, udp + UDP_DST_PORT, 2);
	size_t ip_length = load_be16(ip + IPV4_TOTAL_LENGTH);
	if (ETH_HEADER_LENGTH + ip_length <= length)
		tx_frame(p, frame, ETH_HEADER_LENGTH + ip_length);
}

static void pair_poll(struct mq_pair *p)
{
	uint16_t pending = virtq_used_pending(&p->rx);
	if (pending > MQ_BUDGET)
		pending = MQ_BUDGET;
	for (uint16_t n = 0; n < pending; n++) {
		struct virtq_used_elem used = virtq_pop_used(&p->rx);
		if (used.id >= p->rx.size)
			mq_fail("the device returned an RX descriptor id beyond the queue size");
		if (used.len > VIRTIO_NET_HEADER_LENGTH && used.len <= MQ_BUFFER_SIZE)
			frame_input(p, p->rx_buffers + (size_t)used.id * MQ_BUFFER_SIZE + VIRTIO_NET_HEADER_LENGTH,
				    used.len - VIRTIO_NET_HEADER_LENGTH);
		virtq_push(&p->rx, (uint16_t)used.id);
	}
	virtq_publish(&p->rx);
	virtq_publish(&p->tx);
}

static void mq_report(void)
{
	struct line line;
	line_start(&line, "mq pairs ");
	line_u64(&line, mq.pairs);
	line_str(&line, " rx");
	for (unsigned i = 0; i < mq.pairs; i++) {
		line_str(&line, " ");
		line_u64(&line, mq.pair[i].rx_frames);
	}
	line_str(&line, " tx");
	for (unsigned i = 0; i < mq.pairs; i++) {
		line_str(&line, " ");
		line_u64(&line, mq.pair[i].tx_frames);
	}
	line_send(&line);
}

/* "A.B.C.D" with an optional "/P" (ignored: this mode only answers). */
static void parse_ip(const char *value, size_t length)
{
	size_t i = 0;
	for (int part = 0; part < 4; part++) {
		unsigned byte = 0;
		size_t start = i;
		if (part && (i >= length || value[i++] != '.'))
			fail("bad option", "ip (expected A.B.C.D)", 20);
		start = i;
		while (i < length && value[i] >= '0' && value[i] <= '9' && byte <= 255)
			byte = byte * 10 + (unsigned)(value[i++] - '0');
		if (i == start || byte > 255)
			fail("bad option", "ip (expected A.B.C.D)", 20);
		mq.ip[part] = (uint8_t)byte;
	}
}

void mode_mq_echo(const char *options)
{
	const char *value;
	size_t length;
	if (!cmdline_option(options, "ip", &value, &length))
		fail("missing option", "ip=A.B.C.D (the guest's address)", 32);
	parse_ip(value, length);
	uint64_t pairs = cmdline_option_u64(options, "pairs", 2);
	uint64_t report_ms = cmdline_option_u64(options, "report_ms", 1000);
	if (!report_ms)
		report_ms = 1000;
	tsc_calibrate();
	mq_init((unsigned)(pairs ? pairs : 1));
	uint64_t power_interval = tsc_from_ms(MQ_POWER_POLL_MS), report_interval = tsc_from_ms(report_ms);
	uint64_t next_power = rdtsc() + power_interval, next_report = rdtsc() + report_interval;
	for (;;) {
		for (unsigned i = 0; i < mq.pairs; i++)
			pair_poll(&mq.pair[i]);
		uint64_t now = rdtsc();
		if (now >= next_power) {
			if (power_request_pending())
				power_off();
			next_power = now + power_interval;
		}
		if (now >= next_report) {
			mq_report();
			next_report = now + report_interval;
		}
	}
}

/*
 * Network modes over the ring-3 virtio-net driver:
 *   echo   answers ARP for its address, ICMP echo requests and UDP datagrams to port 7;
 *   sink   counts every frame received, reports `sink frames F bytes B` every report_ms;
 *   source sends UDP datagrams of `size` payload bytes to peer:port as fast as the device
 *          takes them (payload: 64-bit big-endian sequence number from 0, then bytes
 *          i & 0xff), reports `source frames F bytes B` every report_ms, stops after count.
 * Every mode answers ARP and ping, so the host can reach it. Byte counts are Ethernet
 * frame bytes (no virtio-net header, no FCS). The loops poll the rings, the TSC for
 * reports, and the i8042 for Ctrl-Alt-Del every POWER_POLL_MS (a port read is an exit).
 */
#include "guest.h"
#include "net.h"
#include "virtio_net.h"

#define POWER_POLL_MS         10
#define DEFAULT_REPORT_MS     1000
#define DEFAULT_PREFIX        24
#define DEFAULT_SOURCE_SIZE   1400
#define DEFAULT_SOURCE_PORT   9000
#define SOURCE_SEQUENCE_BYTES 8
#define RECEIVE_BUDGET        64         /* frames per poll before replies are flushed */
#define ARP_RETRY_MS          200
#define TX_WAIT_MS            100        /* a reply waits this long for a TX buffer, then is dropped */

struct ipv4_address { uint8_t b[4]; };

static struct {
	uint8_t mac[ETHERNET_ADDRESS_LENGTH];
	struct ipv4_address ip;
	unsigned prefix;
	bool echo_udp;                           /* echo mode: UDP port 7 is answered */
	/* source: the peer, once ARP has answered */
	struct ipv4_address peer;
	bool peer_wanted, peer_resolved;
	uint8_t peer_mac[ETHERNET_ADDRESS_LENGTH];
	/* counters */
	uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes, replies, replies_dropped;
} net;

static bool ipv4_equal(const uint8_t *a, const struct ipv4_address *b)
{
	return a[0] == b->b[0] && a[1] == b->b[1] && a[2] == b->b[2] && a[3] == b->b[3];
}

/* --- command-line values --- */

static void __attribute__((noreturn)) bad_option(const char *key, const char *value, size_t length, const char *expected)
{
	struct line line;
	line_start(&line, key);
	line_str(&line, "=");
	for (size_t i = 0; i < length && line.length < 60; i++)
		line.text[line.length++] = value[i];
	line_str(&line, " (expected ");
	line_str(&line, expected);
	line_str(&line, ")");
	fail("bad option", line.text, line.length);
}

/* bad_option for a key=value that was found but is out of range. */
static void __attribute__((noreturn)) bad_option_in(const char *options, const char *key, const char *expected)
{
	const char *value = "";
	size_t length = 0;
	cmdline_option(options, key, &value, &length);
	bad_option(key, value, length, expected);
}

static void __attribute__((noreturn)) missing_option(const char *what)
{
	fail("missing option", what, strlen(what));
}

/* Parses a decimal number of at most `max` from value[*i], advancing *i. */
static bool parse_decimal(const char *value, size_t length, size_t *i, unsigned max, unsigned *out)
{
	unsigned number = 0;
	size_t start = *i;
	while (*i < length && value[*i] >= '0' && value[*i] <= '9') {
		number = number * 10 + (unsigned)(value[*i] - '0');
		if (number > max)
			return false;
		(*i)++;
	}
	*out = number;
	return *i > start;
}

/* "A.B.C.D" or, with prefix != NULL, "A.B.C.D/P" (P defaults to DEFAULT_PREFIX). */
static bool parse_ipv4(const char *value, size_t length, struct ipv4_address *ip, unsigned *prefix)
{
	size_t i = 0;
	for (int part = 0; part < 4; part++) {
		unsigned byte;
		if (part && (i >= length || value[i++] != '.'))
			return false;
		if (!parse_decimal(value, length, &i, 255, &byte))
			return false;
		ip->b[part] = (uint8_t)byte;
	}
	if (prefix) {
		*prefix = DEFAULT_PREFIX;
		if (i < length && value[i] == '/') {
			i++;
			if (!parse_decimal(value, length, &i, 32, prefix))
				return false;
		}
	}
	return i == length;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static bool parse_mac(const char *value, size_t length, uint8_t mac[ETHERNET_ADDRESS_LENGTH])
{
	if (length != 17)
		return false;
	for (int i = 0; i < ETHERNET_ADDRESS_LENGTH; i++) {
		int high = hex_digit(value[3 * i]), low = hex_digit(value[3 * i + 1]);
		if (high < 0 || low < 0 || (i < 5 && value[3 * i + 2] != ':'))
			return false;
		mac[i] = (uint8_t)(high << 4 | low);
	}
	return !(mac[0] & 1);                    /* a unicast address */
}

static void line_ipv4(struct line *line, const struct ipv4_address *ip)
{
	for (int i = 0; i < 4; i++) {
		if (i)
			line_str(line, ".");
		line_u64(line, ip->b[i]);
	}
}

static void line_mac(struct line *line, const uint8_t *mac)
{
	for (int i = 0; i < ETHERNET_ADDRESS_LENGTH; i++) {
		if (i)
			line_str(line, ":");
		char digits[3] = { "0123456789abcdef"[mac[i] >> 4], "0123456789abcdef"[mac[i] & 0xf], 0 };
		line_str(line, digits);
	}
}

/* --- Internet checksum (RFC 1071), summed in native byte order: the folded sum of
 * little-endian words is the byte-swapped big-endian sum, so storing it natively puts
 * the right bytes on the wire. Segments must start at even offsets of the whole. --- */

static uint64_t checksum_add(uint64_t sum, const uint8_t *data, size_t length)
{
	while (length >= 4) {
		uint32_t word;
		__builtin_memcpy(&word, data, 4);    /* an unaligned load, inlined */
		sum += word;
		data += 4;
		length -= 4;
	}
	if (length >= 2) {
		sum += (uint32_t)(data[0] | data[1] << 8);
		data += 2;
		length -= 2;
	}
	if (length)
		sum += data[0];
	return sum;
}

static uint16_t checksum_finish(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void checksum_store(uint8_t *field, uint16_t native)
{
	__builtin_memcpy(field, &native, 2);
}

static uint64_t udp_pseudo_header_sum(const uint8_t *ip_header, uint16_t udp_length)
{
	uint8_t pseudo[PSEUDO_HEADER_LENGTH];
	memcpy(pseudo + PSEUDO_SRC, ip_header + IPV4_SRC, 4);
	memcpy(pseudo + PSEUDO_DST, ip_header + IPV4_DST, 4);
	pseudo[PSEUDO_ZERO] = 0;
	pseudo[PSEUDO_PROTOCOL] = IP_PROTOCOL_UDP;
	store_be16(pseudo + PSEUDO_LENGTH, udp_length);
	return checksum_add(0, pseudo, sizeof pseudo);
}

/* --- transmit --- */

/* A TX buffer for a reply; waits a little for the device to finish earlier frames rather
 * than drop at once. NULL (and the reply counted as dropped) if it does not. */
static uint8_t *reply_buffer(void)
{
	uint8_t *buffer = virtio_net_transmit_buffer();
	if (buffer)
		return buffer;
	virtio_net_transmit_flush();
	uint64_t deadline = rdtsc() + tsc_from_ms(TX_WAIT_MS);
	while (!(buffer = virtio_net_transmit_buffer()) && rdtsc() < deadline)
		cpu_relax();
	if (!buffer)
		net.replies_dropped++;
	return buffer;
}

static void transmit_queue(size_t length)
{
	virtio_net_transmit_queue(length);
	net.tx_frames++;
	net.tx_bytes += length;
}

static void arp_send(uint16_t operation, const uint8_t *target_mac, const struct ipv4_address *target_ip,
		     const uint8_t *destination_mac)
{
	uint8_t *frame = reply_buffer();
	if (!frame)
		return;
	memcpy(frame + ETH_DST, destination_mac, ETHERNET_ADDRESS_LENGTH);
	memcpy(frame + ETH_SRC, net.mac, ETHERNET_ADDRESS_LENGTH);
	store_be16(frame + ETH_TYPE, ETH_TYPE_ARP);
	uint8_t *arp = frame + ETH_HEADER_LENGTH;
	store_be16(arp + ARP_HTYPE, ARP_HTYPE_ETHERNET);
	store_be16(arp + ARP_PTYPE, ETH_TYPE_IPV4);
	arp[ARP_HLEN] = ETHERNET_ADDRESS_LENGTH;
	arp[ARP_PLEN] = 4;
	store_be16(arp + ARP_OPER, operation);
	memcpy(arp + ARP_SHA, net.mac, ETHERNET_ADDRESS_LENGTH);
	memcpy(arp + ARP_SPA, net.ip.b, 4);
	memcpy(arp + ARP_THA, target_mac, ETHERNET_ADDRESS_LENGTH);
	memcpy(arp + ARP_TPA, target_ip->b, 4);
	transmit_queue(ETH_HEADER_LENGTH + ARP_LENGTH);
	net.replies++;
}

/* --- receive --- */

static void arp_input(const uint8_t *arp, size_t length)
{
	if (length < ARP_LENGTH || load_be16(arp + ARP_HTYPE) != ARP_HTYPE_ETHERNET ||
	    load_be16(arp + ARP_PTYPE) != ETH_TYPE_IPV4 || arp[ARP_HLEN] != ETHERNET_ADDRESS_LENGTH || arp[ARP_PLEN] != 4)
		return;
	uint16_t operation = load_be16(arp + ARP_OPER);
	if (net.peer_wanted && ipv4_equal(arp + ARP_SPA, &net.peer) && !(arp[ARP_SHA] & 1)) {
		memcpy(net.peer_mac, arp + ARP_SHA, ETHERNET_ADDRESS_LENGTH);
		net.peer_resolved = true;
	}
	if (operation == ARP_OPER_REQUEST && ipv4_equal(arp + ARP_TPA, &net.ip)) {
		struct ipv4_address sender;
		memcpy(sender.b, arp + ARP_SPA, 4);
		arp_send(ARP_OPER_REPLY, arp + ARP_SHA, &sender, arp + ARP_SHA);
	}
}

/*
 * Answers an ICMP echo request or a UDP datagram to the echo port: the same packet back
 * with addresses (and ports) swapped. Swapping leaves the UDP checksum right (the sum is
 * commutative); the IPv4 header gets a fresh TTL and checksum, ICMP a fresh checksum.
 */
static void ipv4_reply(const uint8_t *frame, size_t ip_header_length, size_t ip_length, uint8_t protocol)
{
	uint8_t *reply = reply_buffer();
	if (!reply)
		return;
	size_t frame_length = ETH_HEADER_LENGTH + ip_length;
	memcpy(reply, frame, frame_length);
	memcpy(reply + ETH_DST, frame + ETH_SRC, ETHERNET_ADDRESS_LENGTH);
	memcpy(reply + ETH_SRC, net.mac, ETHERNET_ADDRESS_LENGTH);
	uint8_t *ip = reply + ETH_HEADER_LENGTH;
	const uint8_t *request_ip = frame + ETH_HEADER_LENGTH;
	memcpy(ip + IPV4_SRC, net.ip.b, 4);
	memcpy(ip + IPV4_DST, request_ip + IPV4_SRC, 4);
	ip[IPV4_TTL] = IPV4_DEFAULT_TTL;
	ip[IPV4_CHECKSUM] = ip[IPV4_CHECKSUM + 1] = 0;
	checksum_store(ip + IPV4_CHECKSUM, checksum_finish(checksum_add(0, ip, ip_header_length)));
	uint8_t *payload = ip + ip_header_length;
	if (protocol == IP_PROTOCOL_ICMP) {
		payload[ICMP_TYPE] = ICMP_TYPE_ECHO_REPLY;
		payload[ICMP_CHECKSUM] = payload[ICMP_CHECKSUM + 1] = 0;
		checksum_store(payload + ICMP_CHECKSUM, checksum_finish(checksum_add(0, payload, ip_length - ip_header_length)));
	} else {
		memcpy(payload + UDP_SRC_PORT, request_ip + ip_header_length + UDP_DST_PORT, 2);
		memcpy(payload + UDP_DST_PORT, request_ip + ip_header_length + UDP_SRC_PORT, 2);
	}
	transmit_queue(frame_length);
	net.replies++;
}

static void ipv4_input(const uint8_t *frame, size_t length)
{
	const uint8_t *ip = frame + ETH_HEADER_LENGTH;
	size_t available = length - ETH_HEADER_LENGTH;
	if (available < IPV4_HEADER_LENGTH || ip[IPV4_VERSION_IHL] >> 4 != 4)
		return;
	size_t header_length = (size_t)(ip[IPV4_VERSION_IHL] & 0xf) * 4;
	size_t total_length = load_be16(ip + IPV4_TOTAL_LENGTH);
	if (header_length < IPV4_HEADER_LENGTH || total_length < header_length || total_length > available)
		return;
	if (!ipv4_equal(ip + IPV4_DST, &net.ip) ||
	    (load_be16(ip + IPV4_FLAGS_FRAGMENT) & (IPV4_FLAG_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET_MASK)))
		return;                          /* not ours, or a fragment: we reassemble nothing */
	if (checksum_finish(checksum_add(0, ip, header_length)) != 0)
		return;
	const uint8_t *payload = ip + header_length;
	size_t payload_length = total_length - header_length;
	if (ip[IPV4_PROTOCOL] == IP_PROTOCOL_ICMP) {
		if (payload_length >= ICMP_HEADER_LENGTH && payload[ICMP_TYPE] == ICMP_TYPE_ECHO_REQUEST &&
		    payload[ICMP_CODE] == 0 && checksum_finish(checksum_add(0, payload, payload_length)) == 0)
			ipv4_reply(frame, header_length, total_length, IP_PROTOCOL_ICMP);
	} else if (ip[IPV4_PROTOCOL] == IP_PROTOCOL_UDP && net.echo_udp) {
		if (payload_length < UDP_HEADER_LENGTH || load_be16(payload + UDP_DST_PORT) != UDP_ECHO_PORT ||
		    load_be16(payload + UDP_LENGTH) != payload_length)
			return;
		if (load_be16(payload + UDP_CHECKSUM) != 0 &&
		    checksum_finish(checksum_add(udp_pseudo_header_sum(ip, (uint16_t)payload_length), payload, payload_length)) != 0)
			return;
		ipv4_reply(frame, header_length, total_length, IP_PROTOCOL_UDP);
	}
}

static void frame_input(const uint8_t *frame, size_t length, void *context)
{
	(void)context;
	net.rx_frames++;
	net.rx_bytes += length;
	if (length < ETH_HEADER_LENGTH)
		return;
	uint16_t type = load_be16(frame + ETH_TYPE);
	if (type == ETH_TYPE_ARP)
		arp_input(frame + ETH_HEADER_LENGTH, length - ETH_HEADER_LENGTH);
	else if (type == ETH_TYPE_IPV4)
		ipv4_input(frame, length);
}

/* Only counts: the fast path of `sink`, which still answers ARP and ping. */
static void frame_count_and_answer(const uint8_t *frame, size_t length, void *context)
{
	(void)context;
	net.rx_frames++;
	net.rx_bytes += length;
	if (length >= ETH_HEADER_LENGTH) {
		uint16_t type = load_be16(frame + ETH_TYPE);
		if (type == ETH_TYPE_ARP)
			arp_input(frame + ETH_HEADER_LENGTH, length - ETH_HEADER_LENGTH);
		else if (type == ETH_TYPE_IPV4 && length > ETH_HEADER_LENGTH + IPV4_PROTOCOL &&
			 frame[ETH_HEADER_LENGTH + IPV4_PROTOCOL] == IP_PROTOCOL_ICMP)
			ipv4_input(frame, length);
	}
}

/* --- the loop shared by the modes --- */

struct ticker {
	bool link_up;                              /* last link status seen (reported on change) */
	uint64_t next_power_poll, power_interval;
	uint64_t next_report, report_interval;     /* report_interval 0: no reports */
};

static void ticker_init(struct ticker *t, uint64_t report_ms)
{
	uint64_t now = rdtsc();
	t->link_up = true;
	t->power_interval = tsc_from_ms(POWER_POLL_MS);
	t->next_power_poll = now + t->power_interval;
	t->report_interval = tsc_from_ms(report_ms);
	t->next_report = now + t->report_interval;
}

/* Polls the power button when due; true when a report is due (and schedules the next). */
static bool ticker_due(struct ticker *t)
{
	uint64_t now = rdtsc();
	if (now >= t->next_power_poll) {
		if (power_request_pending())
			power_off();
		/* Polled with the power button: we take no config-change interrupt. */
		bool up = virtio_net_link_up();
		if (up != t->link_up) {
			t->link_up = up;
			console_puts(up ? GUEST_TAG "link up\n" : GUEST_TAG "link down\n");
		}
		t->next_power_poll = now + t->power_interval;
	}
	if (!t->report_interval || now < t->next_report)
		return false;
	t->next_report += t->report_interval;
	if (t->next_report < now)                /* after a pause, no burst of catch-up lines */
		t->next_report = now + t->report_interval;
	return true;
}

static void report(const char *what, uint64_t frames, uint64_t bytes)
{
	struct line line;
	line_start(&line, what);
	line_str(&line, " frames ");
	line_u64(&line, frames);
	line_str(&line, " bytes ");
	line_u64(&line, bytes);
	line_send(&line);
}

static void poll_once(virtio_net_receive_handler handler)
{
	virtio_net_receive(handler, NULL, RECEIVE_BUDGET);
	virtio_net_transmit_flush();
}

/* Common options: ip, mac, report_ms. */
static bool have_mac_override;
static uint8_t mac_override[ETHERNET_ADDRESS_LENGTH];

static uint64_t net_options(const char *options)
{
	const char *value;
	size_t length;
	if (!cmdline_option(options, "ip", &value, &length))
		missing_option("ip=A.B.C.D/P (the guest's address)");
	if (!parse_ipv4(value, length, &net.ip, &net.prefix))
		bad_option("ip", value, length, "A.B.C.D/P");
	have_mac_override = cmdline_option(options, "mac", &value, &length);
	if (have_mac_override && !parse_mac(value, length, mac_override))
		bad_option("mac", value, length, "a unicast xx:xx:xx:xx:xx:xx");
	uint64_t report_ms = cmdline_option_u64(options, "report_ms", DEFAULT_REPORT_MS);
	if (!report_ms)
		bad_option_in(options, "report_ms", "at least 1");
	return report_ms;
}

/* The device, then `net up`. */
static void net_up(void)
{
	tsc_calibrate();
	virtio_net_init(have_mac_override ? mac_override : NULL);
	virtio_net_mac(net.mac);
	struct line line;
	line_start(&line, GUEST_TAG "net up mac ");
	line_mac(&line, net.mac);
	line_str(&line, " ip ");
	line_ipv4(&line, &net.ip);
	line_send(&line);
}

void mode_echo(const char *options)
{
	bool report_asked = cmdline_option_u64(options, "report_ms", 0) != 0;
	uint64_t report_ms = net_options(options);
	net_up();
	net.echo_udp = true;
	struct ticker ticker;
	ticker_init(&ticker, report_asked ? report_ms : 0);
	for (;;) {
		poll_once(frame_input);
		if (ticker_due(&ticker)) {
			struct line line;
			line_start(&line, "echo frames ");
			line_u64(&line, net.rx_frames);
			line_str(&line, " replies ");
			line_u64(&line, net.replies);
			line_str(&line, " dropped ");
			line_u64(&line, net.replies_dropped);
			line_send(&line);
		}
	}
}

void mode_sink(const char *options)
{
	uint64_t report_ms = net_options(options);
	net_up();
	struct ticker ticker;
	ticker_init(&ticker, report_ms);
	for (;;) {
		poll_once(frame_count_and_answer);
		if (ticker_due(&ticker))
			report("sink", net.rx_frames, net.rx_bytes);
	}
}

/* --- source --- */

struct source_template {
	uint8_t frame[ETH_HEADER_LENGTH + ETH_MTU];
	size_t length;
	uint64_t checksum_base;                 /* UDP sum of everything but the sequence number */
	uint8_t *udp;                           /* within frame */
};

static void source_template_build(struct source_template *t, uint16_t port, size_t size)
{
	uint8_t *frame = t->frame;
	memcpy(frame + ETH_DST, net.peer_mac, ETHERNET_ADDRESS_LENGTH);
	memcpy(frame + ETH_SRC, net.mac, ETHERNET_ADDRESS_LENGTH);
	store_be16(frame + ETH_TYPE, ETH_TYPE_IPV4);
	uint8_t *ip = frame + ETH_HEADER_LENGTH;
	uint16_t udp_length = (uint16_t)(UDP_HEADER_LENGTH + size);
	ip[IPV4_VERSION_IHL] = 0x45;
	ip[IPV4_TOS] = 0;
	store_be16(ip + IPV4_TOTAL_LENGTH, (uint16_t)(IPV4_HEADER_LENGTH + udp_length));
	store_be16(ip + IPV4_ID, 0);             /* DF set: no fragments, so the id can stay */
	store_be16(ip + IPV4_FLAGS_FRAGMENT, IPV4_FLAG_DONT_FRAGMENT);
	ip[IPV4_TTL] = IPV4_DEFAULT_TTL;
	ip[IPV4_PROTOCOL] = IP_PROTOCOL_UDP;
	ip[IPV4_CHECKSUM] = ip[IPV4_CHECKSUM + 1] = 0;
	memcpy(ip + IPV4_SRC, net.ip.b, 4);
	memcpy(ip + IPV4_DST, net.peer.b, 4);
	checksum_store(ip + IPV4_CHECKSUM, checksum_finish(checksum_add(0, ip, IPV4_HEADER_LENGTH)));
	uint8_t *udp = ip + IPV4_HEADER_LENGTH;
	store_be16(udp + UDP_SRC_PORT, port);
	store_be16(udp + UDP_DST_PORT, port);
	store_be16(udp + UDP_LENGTH, udp_length);
	store_be16(udp + UDP_CHECKSUM, 0);
	uint8_t *payload = udp + UDP_HEADER_LENGTH;
	for (size_t i = 0; i < size; i++)
		payload[i] = i < SOURCE_SEQUENCE_BYTES ? 0 : (uint8_t)i;
	t->udp = udp;
	t->checksum_base = checksum_add(udp_pseudo_header_sum(ip, udp_length), udp, udp_length);
	t->length = ETH_HEADER_LENGTH + IPV4_HEADER_LENGTH + udp_length;
}

/* Queues one datagram with this sequence number; call with a TX buffer free. */
static void source_send(const struct source_template *t, uint64_t sequence)
{
	uint8_t *frame = virtio_net_transmit_buffer();
	memcpy(frame, t->frame, t->length);
	uint8_t *udp = frame + (t->udp - t->frame);
	uint8_t *sequence_bytes = udp + UDP_HEADER_LENGTH;
	store_be64(sequence_bytes, sequence);
	uint16_t checksum = checksum_finish(checksum_add(t->checksum_base, sequence_bytes, SOURCE_SEQUENCE_BYTES));
	checksum_store(udp + UDP_CHECKSUM, checksum ? checksum : 0xffff);   /* 0 would mean "none" */
	transmit_queue(t->length);
}

static void source_resolve_peer(struct ticker *ticker)
{
	static const uint8_t broadcast[ETHERNET_ADDRESS_LENGTH] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t unknown[ETHERNET_ADDRESS_LENGTH];
	uint64_t retry = tsc_from_ms(ARP_RETRY_MS), next_request = rdtsc();
	net.peer_wanted = true;
	while (!net.peer_resolved) {
		if (rdtsc() >= next_request) {
			arp_send(ARP_OPER_REQUEST, unknown, &net.peer, broadcast);
			next_request = rdtsc() + retry;
		}
		poll_once(frame_input);
		ticker_due(ticker);                  /* for the power button; no reports yet */
	}
}

void mode_source(const char *options)
{
	const char *value;
	size_t length;
	if (!cmdline_option(options, "peer", &value, &length))
		missing_option("peer=A.B.C.D (where to send)");
	if (!parse_ipv4(value, length, &net.peer, NULL))
		bad_option("peer", value, length, "A.B.C.D");
	uint64_t port = cmdline_option_u64(options, "port", DEFAULT_SOURCE_PORT);
	if (port == 0 || port > 65535)
		bad_option_in(options, "port", "1..65535");
	uint64_t size = cmdline_option_u64(options, "size", DEFAULT_SOURCE_SIZE);
	if (size < SOURCE_SEQUENCE_BYTES || size > UDP_PAYLOAD_MAX)
		bad_option_in(options, "size", "8..1472 UDP payload bytes");
	uint64_t count = cmdline_option_u64(options, "count", 0);   /* 0: no end */
	uint64_t report_ms = net_options(options);
	uint32_t mask = net.prefix ? ~0u << (32 - net.prefix) : 0;
	uint32_t ours = (uint32_t)net.ip.b[0] << 24 | net.ip.b[1] << 16 | net.ip.b[2] << 8 | net.ip.b[3];
	uint32_t theirs = (uint32_t)net.peer.b[0] << 24 | net.peer.b[1] << 16 | net.peer.b[2] << 8 | net.peer.b[3];
	if ((ours & mask) != (theirs & mask))
		bad_option("peer", value, length, "an address on the guest's own subnet: there is no router");
	net_up();

	struct ticker ticker;
	ticker_init(&ticker, 0);
	source_resolve_peer(&ticker);
	struct line line;
	line_start(&line, GUEST_TAG "source peer ");
	line_ipv4(&line, &net.peer);
	line_str(&line, " mac ");
	line_mac(&line, net.peer_mac);
	line_str(&line, " port ");
	line_u64(&line, port);
	line_str(&line, " size ");
	line_u64(&line, size);
	line_send(&line);

	static struct source_template template;
	source_template_build(&template, (uint16_t)port, size);
	ticker_init(&ticker, report_ms);
	uint64_t sent = 0;
	bool done = false;
	for (;;) {
		/* Fill the TX buffers free now, then one doorbell (if the device wants one). */
		for (size_t room = virtio_net_transmit_room(); room && (!count || sent < count); room--, sent++)
			source_send(&template, sent);
		poll_once(frame_input);
		if (ticker_due(&ticker) || (!done && count && sent == count)) {
			report("source", sent, sent * template.length);
			if (!done && count && sent == count) {
				done = true;
				console_puts(GUEST_TAG "source done\n");
			}
		}
	}
}

/*
 * An ordered UDP stream through the test guest's echo port, for the migration tests and
 * bench/migrate.js: datagrams with sequence numbers leave at a steady rate from one
 * socket, the guest sends each back, and this tool checks what returns. Built at run time
 * with gcc; prints one JSON line when the first echo arrives and one with the results.
 *
 *   seq-stream HOST PORT RATE_PER_S SIZE MAX_SECONDS DRAIN_MS
 *
 * Sends until SIGINT/SIGTERM or MAX_SECONDS, then waits up to DRAIN_MS for the echoes
 * still in flight. Payload (SIZE >= 16 bytes): 64-bit big-endian sequence, 64-bit
 * big-endian send time (CLOCK_MONOTONIC ns), then byte i = (i * 7 + seq) & 0xff.
 *
 * Results: sent, received, missing (sent, never echoed), reordered (an echo arriving after
 * one with a higher sequence), duplicate, corrupt (bad size or payload), maxGapMs (longest
 * silence between two consecutive echoes while sending: the guest's pause seen from
 * outside), maxRttMs, and gaps[] ({atS, ms, fromUs, toUs}: silences over GAP_MS (default 3)
 * ms, atS from the start, fromUs/toUs their ends in CLOCK_MONOTONIC microseconds — the clock
 * every process on the host shares — so a caller can tell which silence spans an event it
 * timed, e.g. a migration).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DATAGRAM 1472
#define HEADER_BYTES 16
#define MAX_GAPS 1024

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++) v = v << 8 | p[i];
	return v;
}

static void fill(uint8_t *p, uint64_t seq, uint32_t size, double sent_at)
{
	put_be64(p, seq);
	put_be64(p + 8, (uint64_t)(sent_at * 1e9));
	for (uint32_t i = HEADER_BYTES; i < size; i++) p[i] = (uint8_t)(i * 7 + seq);
}

int main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: seq-stream HOST PORT RATE_PER_S SIZE MAX_SECONDS DRAIN_MS\n");
		return 2;
	}
	struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
	if (inet_pton(AF_INET, argv[1], &peer.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", argv[1]); return 2; }
	double rate = atof(argv[3]);
	uint32_t size = (uint32_t)atoi(argv[4]);
	double max_seconds = atof(argv[5]), drain = atof(argv[6]) / 1000.0;
	if (rate <= 0 || size < HEADER_BYTES || size > MAX_DATAGRAM) { fprintf(stderr, "bad rate or size\n"); return 2; }

	signal(SIGINT, on_stop);
	signal(SIGTERM, on_stop);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0) { perror("socket"); return 2; }
	int buf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	if (connect(fd, (struct sockaddr *)&peer, sizeof peer) < 0) { perror("connect"); return 2; }

	size_t capacity = (size_t)(rate * (max_seconds + 1)) + 1024;
	uint8_t *seen = calloc(capacity, 1);
	if (!seen) { perror("calloc"); return 2; }
	static uint8_t tx[MAX_DATAGRAM], rx[MAX_DATAGRAM + 1], expect[MAX_DATAGRAM];
	uint64_t sent = 0, received = 0, reordered = 0, duplicate = 0, corrupt = 0, send_errors = 0;
	int64_t highest = -1;
	double start = now_s(), last_reply = 0, max_gap = 0, max_rtt = 0, stop_at = 0;
	double gap_report_s = (getenv("GAP_MS") ? atof(getenv("GAP_MS")) : 3.0) / 1000.0;
	static struct { double at, ms, from, to; } gaps[MAX_GAPS];
	int ngaps = 0;
	int announced = 0;

	for (;;) {
		double t = now_s();
		int sending = !stop_requested && t - start < max_seconds && sent < capacity;
		if (!sending && !stop_at) stop_at = t;
		if (!sending && (received + corrupt >= sent || t - stop_at > drain)) break;
		/* every datagram due by now leaves now: a late wake-up sends a short burst, the rate holds */
		while (sending && start + (double)sent / rate <= t) {
			fill(tx, sent, size, t);
			if (send(fd, tx, size, 0) == (ssize_t)size) sent++;
			else { send_errors++; break; }
		}
		double next = sending ? start + (double)sent / rate : t + 0.001;
		double wait = next - now_s();
		if (wait < 0) wait = 0;
		struct timespec ts = { .tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9) };
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ppoll(&p, 1, &ts, NULL);
		for (;;) {
			ssize_t n = recv(fd, rx, sizeof rx, MSG_DONTWAIT);
			if (n < 0) break;
			double at = now_s();
			if ((uint32_t)n != size) { corrupt++; continue; }
			uint64_t seq = get_be64(rx);
			if (seq >= sent) { corrupt++; continue; }
			fill(expect, seq, size, 0);
			if (memcmp(expect + HEADER_BYTES, rx + HEADER_BYTES, size - HEADER_BYTES) != 0) { corrupt++; continue; }
			if (seen[seq]) { duplicate++; continue; }
			seen[seq] = 1;
			received++;
			if ((int64_t)seq < highest) reordered++;
			else highest = (int64_t)seq;
			double rtt = at - (double)get_be64(rx + 8) / 1e9;
			if (rtt > max_rtt) max_rtt = rtt;
			if (last_reply && !stop_at) {
				double gap = at - last_reply;
				if (gap > max_gap) max_gap = gap;
				if (gap > gap_report_s && ngaps < MAX_GAPS) {
					gaps[ngaps].at = last_reply - start, gaps[ngaps].ms = gap * 1e3;
					gaps[ngaps].from = last_reply, gaps[ngaps++].to = at;
				}
			}
			last_reply = at;
			if (!announced) {
				printf("{\"firstReply\":%llu}\n", (unsigned long long)seq);
				fflush(stdout);
				announced = 1;
			}
		}
	}
	printf("{\"sent\":%llu,\"received\":%llu,\"missing\":%llu,\"reordered\":%llu,\"duplicate\":%llu,\"corrupt\":%llu,"
	       "\"sendErrors\":%llu,\"seconds\":%.3f,\"maxGapMs\":%.3f,\"maxRttMs\":%.3f,\"gaps\":[",
	       (unsigned long long)sent, (unsigned long long)received, (unsigned long long)(sent - received),
	       (unsigned long long)reordered, (unsigned long long)duplicate, (unsigned long long)corrupt,
	       (unsigned long long)send_errors, (stop_at ? stop_at : now_s()) - start, max_gap * 1e3, max_rtt * 1e3);
	for (int i = 0; i < ngaps; i++)
		printf("%s{\"atS\":%.4f,\"ms\":%.3f,\"fromUs\":%.0f,\"toUs\":%.0f}", i ? "," : "", gaps[i].at, gaps[i].ms,
		       gaps[i].from * 1e6, gaps[i].to * 1e6);
	printf("]}\n");
	return 0;
}

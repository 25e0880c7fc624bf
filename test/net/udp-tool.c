/*
 * Host-side UDP traffic for the network tests and bench/net.js, fast enough not to be the
 * bottleneck (recvmmsg/sendmmsg batches). Built at run time with gcc; prints one JSON line.
 *
 *   udp-tool echo HOST PORT COUNT MIN_SIZE MAX_SIZE WINDOW SOCKETS LOSS_TIMEOUT_MS TOTAL_TIMEOUT_S
 *     Sends COUNT datagrams (sizes cycling MIN..MAX) to HOST:PORT, spread over SOCKETS
 *     source ports, with at most WINDOW unanswered; checks every echo byte for byte
 *     (payload: 32-bit big-endian sequence, 32-bit size, then byte i = (i * 7 + seq) & 0xff).
 *     A datagram unanswered for LOSS_TIMEOUT_MS is counted lost and its slot reused.
 *   udp-tool recv PORT COUNT IDLE_MS TOTAL_TIMEOUT_S [DURATION_S]
 *     Receives the test guest's `source` datagrams (64-bit big-endian sequence, then byte
 *     i = i & 0xff) until COUNT (0: no limit), IDLE_MS of silence after the first,
 *     DURATION_S after the first, or the timeout;
 *     counts frames, bytes, out-of-order and bad payloads.
 *   udp-tool send HOST PORT SIZE SECONDS
 *     Sends SIZE-byte datagrams to HOST:PORT as fast as the socket takes them.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DATAGRAM 1472
#define MAX_SOCKETS 64

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int udp_socket(int port)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0) { perror("socket"); exit(2); }
	int size = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(2); }
	return fd;
}

static struct sockaddr_in address(const char *host, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", host); exit(2); }
	return a;
}

/* --- echo --- */

/* One recvmmsg of up to BATCH datagrams into rx[i] (one slot each, a byte spare to see oversize). */
static int recv_batch(int fd, struct mmsghdr *msgs, struct iovec *iovs, uint8_t rx[][MAX_DATAGRAM + 1])
{
	for (int i = 0; i < BATCH; i++) {
		iovs[i].iov_base = rx[i];
		iovs[i].iov_len = MAX_DATAGRAM + 1;
		memset(&msgs[i], 0, sizeof msgs[i]);
		msgs[i].msg_hdr.msg_iov = &iovs[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	return recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, 0);
}

static void echo_fill(uint8_t *p, uint32_t seq, uint32_t size)
{
	for (uint32_t i = 8; i < size; i++)
		p[i] = (uint8_t)(i * 7 + seq);
	p[0] = seq >> 24; p[1] = seq >> 16; p[2] = seq >> 8; p[3] = seq;
	p[4] = size >> 24; p[5] = size >> 16; p[6] = size >> 8; p[7] = size;
}

static int echo(int argc, char **argv)
{
	if (argc < 11) return 2;
	struct sockaddr_in peer = address(argv[2], atoi(argv[3]));
	uint32_t count = (uint32_t)strtoul(argv[4], 0, 10);
	uint32_t min_size = (uint32_t)atoi(argv[5]), max_size = (uint32_t)atoi(argv[6]);
	uint32_t window = (uint32_t)atoi(argv[7]);
	int nsockets = atoi(argv[8]);
	double loss_timeout = atof(argv[9]) / 1000.0, total_timeout = atof(argv[10]);
	if (min_size < 8) min_size = 8;
	if (max_size > MAX_DATAGRAM) max_size = MAX_DATAGRAM;
	if (nsockets < 1) nsockets = 1;
	if (nsockets > MAX_SOCKETS) nsockets = MAX_SOCKETS;
	int fds[MAX_SOCKETS];
	for (int i = 0; i < nsockets; i++) fds[i] = udp_socket(0);
	uint8_t *answered = calloc(count ? count : 1, 1);
	double *sent_at = calloc(window, sizeof(double));
	uint32_t base = 0, next = 0, received = 0, lost = 0, corrupt = 0, duplicate = 0, foreign = 0, in_flight = 0;
	uint64_t bytes = 0;
	static uint8_t tx[BATCH][MAX_DATAGRAM], rx[BATCH][MAX_DATAGRAM + 1], expect[MAX_DATAGRAM];
	struct mmsghdr msgs[BATCH];
	struct iovec iovs[BATCH];
	struct pollfd pfds[MAX_SOCKETS];
	double start = now_s(), deadline = start + total_timeout;
	int sock_cursor = 0;
	while (base < count && now_s() < deadline) {
		/* send what the window allows, per socket in batches */
		while (next < count && next - base < window) {
			int fd = fds[sock_cursor];
			sock_cursor = (sock_cursor + 1) % nsockets;
			int n = 0;
			while (n < BATCH && next < count && next - base < window) {
				uint32_t size = min_size + (max_size > min_size ? next % (max_size - min_size + 1) : 0);
				echo_fill(tx[n], next, size);
				iovs[n].iov_base = tx[n];
				iovs[n].iov_len = size;
				memset(&msgs[n], 0, sizeof msgs[n]);
				msgs[n].msg_hdr.msg_name = &peer;
				msgs[n].msg_hdr.msg_namelen = sizeof peer;
				msgs[n].msg_hdr.msg_iov = &iovs[n];
				msgs[n].msg_hdr.msg_iovlen = 1;
				sent_at[next % window] = now_s();
				n++, next++;
			}
			int done = sendmmsg(fd, msgs, (unsigned)n, 0);
			if (done < 0) done = 0;
			if (done < n) { next -= (uint32_t)(n - done); break; }   /* socket full: later */
			in_flight += (uint32_t)done;
		}
		for (int i = 0; i < nsockets; i++) pfds[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
		poll(pfds, (nfds_t)nsockets, 5);
		for (int s = 0; s < nsockets; s++) {
			if (!(pfds[s].revents & POLLIN)) continue;
			for (;;) {
				int n = recv_batch(fds[s], msgs, iovs, rx);
				if (n <= 0) break;
				for (int i = 0; i < n; i++) {
					uint8_t *p = rx[i];
					uint32_t len = msgs[i].msg_len;
					if (len < 8) { foreign++; continue; }
					uint32_t seq = (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
					uint32_t size = (uint32_t)p[4] << 24 | p[5] << 16 | p[6] << 8 | p[7];
					if (seq >= next || size != len) { corrupt++; continue; }
					echo_fill(expect, seq, size);
					if (memcmp(expect, p, size) != 0) { corrupt++; continue; }
					if (answered[seq]) { duplicate++; continue; }
					if (seq < base) { duplicate++; continue; }   /* already counted lost */
					answered[seq] = 1;
					received++;
					bytes += size;
					in_flight--;
				}
			}
		}
		/* advance the window past answered ones and those given up on */
		double t = now_s();
		while (base < next && (answered[base] || t - sent_at[base % window] > loss_timeout)) {
			if (!answered[base]) { lost++; in_flight--; }
			base++;
		}
	}
	double elapsed = now_s() - start;
	lost += count - base;   /* never finished (total timeout) */
	printf("{\"sent\":%u,\"received\":%u,\"lost\":%u,\"corrupt\":%u,\"duplicate\":%u,\"foreign\":%u,\"bytes\":%llu,\"seconds\":%.3f}\n",
	       next, received, lost, corrupt, duplicate, foreign, (unsigned long long)bytes, elapsed);
	return 0;
}

/* --- recv --- */

static int recv_source(int argc, char **argv)
{
	if (argc < 6) return 2;
	int fd = udp_socket(atoi(argv[2]));
	uint64_t count = strtoull(argv[3], 0, 10);
	double idle = atof(argv[4]) / 1000.0, total_timeout = atof(argv[5]);
	double duration = argc > 6 ? atof(argv[6]) : 0;
	uint64_t received = 0, bytes = 0, out_of_order = 0, bad = 0;
	int64_t first = -1, last = -1;
	static uint8_t rx[BATCH][MAX_DATAGRAM + 1];
	struct mmsghdr msgs[BATCH];
	struct iovec iovs[BATCH];
	double start = now_s(), first_at = 0, last_at = 0;
	printf("{\"listening\":%s}\n", argv[2]);
	fflush(stdout);
	for (;;) {
		double t = now_s();
		if (t - start > total_timeout || (count && received >= count) || (last_at && t - last_at > idle) ||
		    (duration > 0 && first_at && t - first_at > duration)) break;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 20);
		for (;;) {
			int n = recv_batch(fd, msgs, iovs, rx);
			if (n <= 0) break;
			last_at = now_s();
			if (!first_at) first_at = last_at;
			for (int i = 0; i < n; i++) {
				uint8_t *d = rx[i];
				uint32_t len = msgs[i].msg_len;
				if (len < 8) { bad++; continue; }
				int64_t seq = 0;
				for (int b = 0; b < 8; b++) seq = seq << 8 | d[b];
				if (first < 0) first = seq;
				if (seq <= last) out_of_order++;
				last = seq;
				for (uint32_t b = 8; b < len; b++)
					if (d[b] != (uint8_t)b) { bad++; break; }
				received++;
				bytes += len;
			}
		}
	}
	printf("{\"received\":%llu,\"bytes\":%llu,\"first\":%lld,\"last\":%lld,\"outOfOrder\":%llu,\"badPayload\":%llu,\"activeSeconds\":%.6f}\n",
	       (unsigned long long)received, (unsigned long long)bytes, (long long)first, (long long)last,
	       (unsigned long long)out_of_order, (unsigned long long)bad, last_at > first_at ? last_at - first_at : 0.0);
	return 0;
}

/* --- send --- */

static int send_flood(int argc, char **argv)
{
	if (argc < 6) return 2;
	struct sockaddr_in peer = address(argv[2], atoi(argv[3]));
	uint32_t size = (uint32_t)atoi(argv[4]);
	double seconds = atof(argv[5]);
	if (size < 8) size = 8;
	if (size > MAX_DATAGRAM) size = MAX_DATAGRAM;
	int fd = udp_socket(0);
	static uint8_t payload[MAX_DATAGRAM];
	memset(payload, 0x5a, sizeof payload);
	struct mmsghdr msgs[BATCH];
	struct iovec iov = { payload, size };
	for (int i = 0; i < BATCH; i++) {
		memset(&msgs[i], 0, sizeof msgs[i]);
		msgs[i].msg_hdr.msg_name = &peer;
		msgs[i].msg_hdr.msg_namelen = sizeof peer;
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	uint64_t sent = 0;
	double start = now_s(), end = start + seconds;
	while (now_s() < end) {
		int n = sendmmsg(fd, msgs, BATCH, 0);
		if (n > 0) sent += (uint64_t)n;
		else {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			poll(&p, 1, 1);
		}
	}
	printf("{\"sent\":%llu,\"seconds\":%.6f}\n", (unsigned long long)sent, now_s() - start);
	return 0;
}

int main(int argc, char **argv)
{
	int rc = 2;
	if (argc > 1 && !strcmp(argv[1], "echo")) rc = echo(argc, argv);
	else if (argc > 1 && !strcmp(argv[1], "recv")) rc = recv_source(argc, argv);
	else if (argc > 1 && !strcmp(argv[1], "send")) rc = send_flood(argc, argv);
	if (rc == 2) fprintf(stderr, "usage: see the comment at the top of udp-tool.c\n");
	return rc;
}

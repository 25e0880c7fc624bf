/* Wire formats for the network modes: Ethernet II, ARP for IPv4, IPv4, ICMP echo, UDP.
 * All multi-byte fields are big-endian on the wire; offsets are from the start of each
 * header. */
#ifndef TESTGUEST_NET_H
#define TESTGUEST_NET_H

#include "hw.h"

#define ETH_DST              0
#define ETH_SRC              6
#define ETH_TYPE             12
#define ETH_HEADER_LENGTH    14
#define ETH_TYPE_IPV4        0x0800
#define ETH_TYPE_ARP         0x0806
#define ETH_MTU              1500

#define ARP_HTYPE            0      /* 1: Ethernet */
#define ARP_PTYPE            2      /* 0x0800 */
#define ARP_HLEN             4      /* 6 */
#define ARP_PLEN             5      /* 4 */
#define ARP_OPER             6
#define ARP_SHA              8
#define ARP_SPA              14
#define ARP_THA              18
#define ARP_TPA              24
#define ARP_LENGTH           28
#define ARP_HTYPE_ETHERNET   1
#define ARP_OPER_REQUEST     1
#define ARP_OPER_REPLY       2

#define IPV4_VERSION_IHL     0
#define IPV4_TOS             1
#define IPV4_TOTAL_LENGTH    2
#define IPV4_ID              4
#define IPV4_FLAGS_FRAGMENT  6
#define IPV4_TTL             8
#define IPV4_PROTOCOL        9
#define IPV4_CHECKSUM        10
#define IPV4_SRC             12
#define IPV4_DST             16
#define IPV4_HEADER_LENGTH   20     /* without options */
#define IPV4_FLAG_DONT_FRAGMENT  0x4000
#define IPV4_FLAG_MORE_FRAGMENTS 0x2000
#define IPV4_FRAGMENT_OFFSET_MASK 0x1fff
#define IPV4_DEFAULT_TTL     64
#define IP_PROTOCOL_ICMP     1
#define IP_PROTOCOL_UDP      17

#define ICMP_TYPE            0
#define ICMP_CODE            1
#define ICMP_CHECKSUM        2
#define ICMP_HEADER_LENGTH   8
#define ICMP_TYPE_ECHO_REPLY   0
#define ICMP_TYPE_ECHO_REQUEST 8

#define UDP_SRC_PORT         0
#define UDP_DST_PORT         2
#define UDP_LENGTH           4
#define UDP_CHECKSUM         6
#define UDP_HEADER_LENGTH    8
#define UDP_ECHO_PORT        7
#define UDP_PAYLOAD_MAX      (ETH_MTU - IPV4_HEADER_LENGTH - UDP_HEADER_LENGTH)

/* IPv4 pseudo-header for the UDP checksum (RFC 768). */
#define PSEUDO_SRC           0
#define PSEUDO_DST           4
#define PSEUDO_ZERO          8
#define PSEUDO_PROTOCOL      9
#define PSEUDO_LENGTH        10
#define PSEUDO_HEADER_LENGTH 12

static inline uint16_t load_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void store_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void store_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

#endif

/*
 * A virtio-net driver for one device, polled from ring 3: queue 0 receives, queue 1
 * transmits. Every buffer is one descriptor holding the 12-byte virtio-net header and
 * then the Ethernet frame (VIRTIO_F_VERSION_1 lets header and data share a buffer).
 */
#ifndef TESTGUEST_VIRTIO_NET_H
#define TESTGUEST_VIRTIO_NET_H

#include "hw.h"

#define ETHERNET_ADDRESS_LENGTH 6
#define VIRTIO_NET_FRAME_MAX    2036     /* buffer (2 KiB) minus the virtio-net header */

/* Finds, resets and starts the device; RX buffers are posted on return. `mac_override`
 * (or NULL) replaces the device's address in what we send and accept. */
void virtio_net_init(const uint8_t *mac_override);
void virtio_net_mac(uint8_t mac[ETHERNET_ADDRESS_LENGTH]);

/* Hands up to `budget` received frames to `handle`, then gives their buffers back to the
 * device (one doorbell at most). The frame is only valid during the call. Returns how
 * many frames were handled. */
typedef void (*virtio_net_receive_handler)(const uint8_t *frame, size_t length, void *context);
size_t virtio_net_receive(virtio_net_receive_handler handle, void *context, size_t budget);

/* Transmit: take a buffer, write a frame of up to VIRTIO_NET_FRAME_MAX bytes into it,
 * queue it; virtio_net_transmit_flush() hands everything queued to the device with one
 * doorbell at most. NULL while every buffer is with the device. */
uint8_t *virtio_net_transmit_buffer(void);
void virtio_net_transmit_queue(size_t length);
void virtio_net_transmit_flush(void);
/* Buffers free for transmission (after taking back what the device has finished). */
size_t virtio_net_transmit_room(void);

/* The device's link status (config `status`, LINK_UP); true when it does not report one.
 * One MMIO read: an exit, so call it on a slow tick. */
bool virtio_net_link_up(void);

struct virtio_net_counters { uint64_t rx_notifications, tx_notifications; };
struct virtio_net_counters virtio_net_counters(void);

#endif

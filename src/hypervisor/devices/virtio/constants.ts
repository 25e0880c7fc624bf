/**
 * Virtio 1.x numbers and byte layouts (virtio spec 1.2: §2 basic facilities, §4.1 PCI
 * transport, §5.1 network device), defined once. Feature bits are bit numbers; 64-bit
 * feature sets travel as two 32-bit halves (`lo`, `hi`) so the hot path never needs bigint.
 */
import { Struct, f } from '../../../util/struct';

// --- device status (§2.1) ---
export const STATUS_ACKNOWLEDGE = 0x01;
export const STATUS_DRIVER = 0x02;
export const STATUS_DRIVER_OK = 0x04;
export const STATUS_FEATURES_OK = 0x08;
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

// --- transport-independent feature bits (§6) ---
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;

// --- virtio-net feature bits (§5.1.3) ---
export const NET_F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
} as const;

/** A 64-bit feature set as two 32-bit words. */
export interface FeatureBits { lo: number; hi: number }

export function hasFeature(fs: FeatureBits, bit: number): boolean {
  return bit < 32 ? ((fs.lo >>> bit) & 1) === 1 : ((fs.hi >>> (bit - 32)) & 1) === 1;
}

export function featureSet(bits: readonly number[]): FeatureBits {
  let lo = 0, hi = 0;
  for (const b of bits) {
    if (b < 32) lo |= 1 << b;
    else hi |= 1 << (b - 32);
  }
  return { lo: lo >>> 0, hi: hi >>> 0 };
}

// --- split virtqueue (§2.7) ---
export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
/** used->flags: the device does not want notifications (without EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;
/** avail->flags: the driver does not want interrupts (without EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;

export const VRING_DESC = new Struct('virtq_desc', 16, { addr: f(0, 'u64'), len: f(8, 'u32'), flags: f(12, 'u16'), next: f(14, 'u16') });
export const VRING_DESC_SIZE = 16;
/** virtq_avail: flags, idx, ring[size], then used_event (EVENT_IDX). */
export const VRING_AVAIL = { flags: 0, idx: 2, ring: 4, entrySize: 2 } as const;
/** virtq_used: flags, idx, ring[size] of {id u32, len u32}, then avail_event (EVENT_IDX). */
export const VRING_USED = { flags: 0, idx: 2, ring: 4, entrySize: 8, elemId: 0, elemLen: 4 } as const;
export const availRingBytes = (size: number): number => VRING_AVAIL.ring + VRING_AVAIL.entrySize * size + 2;
export const usedRingBytes = (size: number): number => VRING_USED.ring + VRING_USED.entrySize * size + 2;
/** Required alignments of the three areas (§2.7). */
export const VRING_ALIGN = { desc: 16, avail: 2, used: 4 } as const;

/** A vector value meaning "no MSI-X vector" (§4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

// --- virtio-pci (§4.1) ---
export const VIRTIO_PCI_VENDOR = 0x1af4;
/** Modern device ids are 0x1040 + virtio device type. */
export const VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040;
export const VIRTIO_ID_NET = 1;
export const PCI_CLASS_NETWORK_ETHERNET = 0x020000;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;

export const VIRTIO_PCI_CAP = { COMMON_CFG: 1, NOTIFY_CFG: 2, ISR_CFG: 3, DEVICE_CFG: 4, PCI_CFG: 5 } as const;
/** struct virtio_pci_cap, offsets relative to the capability (id at 0, next at 1). */
export const VIRTIO_PCI_CAP_LAYOUT = new Struct('virtio_pci_cap', 16, {
  cap_vndr: f(0, 'u8'), cap_next: f(1, 'u8'), cap_len: f(2, 'u8'), cfg_type: f(3, 'u8'), bar: f(4, 'u8'),
  id: f(5, 'u8'), offset: f(8, 'u32'), length: f(12, 'u32'),
});
/** virtio_pci_notify_cap adds the multiplier after the common part. */
export const VIRTIO_PCI_NOTIFY_CAP_SIZE = 20;
export const VIRTIO_PCI_NOTIFY_MULTIPLIER_OFFSET = 16;

/** struct virtio_pci_common_cfg (§4.1.4.3). 64-bit fields are accessed as 32-bit halves. */
export const COMMON_CFG = {
  device_feature_select: 0x00, device_feature: 0x04, driver_feature_select: 0x08, driver_feature: 0x0c,
  config_msix_vector: 0x10, num_queues: 0x12, device_status: 0x14, config_generation: 0x15,
  queue_select: 0x16, queue_size: 0x18, queue_msix_vector: 0x1a, queue_enable: 0x1c, queue_notify_off: 0x1e,
  queue_desc_lo: 0x20, queue_desc_hi: 0x24, queue_driver_lo: 0x28, queue_driver_hi: 0x2c,
  queue_device_lo: 0x30, queue_device_hi: 0x34,
  size: 0x38,
} as const;

/** ISR status bits (§4.1.4.5). */
export const ISR_QUEUE = 0x1;
export const ISR_CONFIG = 0x2;

// --- MSI-X (PCI 3.0 §6.8.2) ---
/** Capability body offsets relative to the capability start. */
export const MSIX_CAP = { control: 2, table: 4, pba: 8, size: 12 } as const;
export const MSIX_CONTROL_ENABLE = 0x8000;
export const MSIX_CONTROL_FUNCTION_MASK = 0x4000;
/** One table entry. */
export const MSIX_ENTRY = { addressLo: 0, addressHi: 4, data: 8, vectorControl: 12, size: 16 } as const;
export const MSIX_VECTOR_MASKED = 1;
/** The LAPIC's MSI window: messages outside it are not interrupts. */
export const MSI_ADDRESS_BASE = 0xfee00000;
export const MSI_ADDRESS_MASK = 0xfff00000;

// --- virtio-net (§5.1) ---
/** struct virtio_net_hdr_v1 (12 bytes with VERSION_1 or MRG_RXBUF). */
export const VIRTIO_NET_HDR = new Struct('virtio_net_hdr_v1', 12, {
  flags: f(0, 'u8'), gso_type: f(1, 'u8'), hdr_len: f(2, 'u16'), gso_size: f(4, 'u16'),
  csum_start: f(6, 'u16'), csum_offset: f(8, 'u16'), num_buffers: f(10, 'u16'),
});
export const VIRTIO_NET_HDR_SIZE = 12;
export const VIRTIO_NET_HDR_NUM_BUFFERS = 10;

/** struct virtio_net_config, the fields we expose (§5.1.4). */
export const VIRTIO_NET_CONFIG = new Struct('virtio_net_config', 12, {
  mac0: f(0, 'u8'), status: f(6, 'u16'), max_virtqueue_pairs: f(8, 'u16'), mtu: f(10, 'u16'),
});
export const VIRTIO_NET_CONFIG_MAC = 0;
export const VIRTIO_NET_S_LINK_UP = 1;

/** Control queue (§5.1.6.5): class, command, then data, then a one-byte ack written by us. */
export const VIRTIO_NET_CTRL = {
  RX: 0, RX_PROMISC: 0, RX_ALLMULTI: 1, RX_ALLUNI: 2, RX_NOMULTI: 3, RX_NOUNI: 4, RX_NOBCAST: 5,
  MAC: 1, MAC_TABLE_SET: 0, MAC_ADDR_SET: 1,
  MQ: 4, MQ_VQ_PAIRS_SET: 0, MQ_VQ_PAIRS_MIN: 1, MQ_VQ_PAIRS_MAX: 0x8000,
  OK: 0, ERR: 1,
} as const;

// A virtio-net driver written in the test, acting as the guest would: PCI config through
// ports 0xCF8/0xCFC, BAR registers through the VM's MMIO bus, rings in guest RAM, and
// notifications as writes to the queue's notify address (MMIO) or its ioeventfd.
import { native } from '../../src/native';
import { PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA } from '../../src/hypervisor/devices/pci';
import {
  COMMON_CFG, FeatureBits, MSIX_CAP, MSIX_CONTROL_ENABLE, MSIX_ENTRY, PCI_CAP_ID_MSIX, PCI_CAP_ID_VNDR, STATUS_ACKNOWLEDGE,
  STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_PCI_CAP, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
  availRingBytes, usedRingBytes,
} from '../../src/hypervisor/devices/virtio/constants';
import type { Vm } from '../../src/hypervisor/vm';

export const HDR = 12;

export interface DriverQueue {
  index: number;
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** Next avail idx we publish. */
  availIdx: number;
  /** Used idx we consumed up to. */
  usedSeen: number;
  /** Free descriptor ids. */
  free: number[];
  /** Buffer gpa per descriptor head. */
  buffers: Map<number, { gpa: number; len: number }>;
}

export interface UsedElem { id: number; len: number; gpa: number }

export class TestDriver {
  caps: { type: number; bar: number; offset: number; length: number; notifyMul: number }[] = [];
  msixCap = 0;
  queues: DriverQueue[] = [];
  private next: number;

  constructor(public vm: Vm, readonly slot: number, memBase = 0x2000000) {
    this.next = memBase;
    this.findCaps();
  }

  alloc(bytes: number, align = 4096): number {
    const at = Math.ceil(this.next / align) * align;
    this.next = at + bytes;
    return at;
  }

  // --- PCI config, as port I/O
  cfgRead(reg: number, size: 1 | 2 | 4): number {
    this.vm.pio.write(PCI_CONFIG_ADDRESS, 4, (0x80000000 | (this.slot << 11) | (reg & 0xfc)) >>> 0);
    return this.vm.pio.read(PCI_CONFIG_DATA + (reg & 3), size);
  }

  cfgWrite(reg: number, size: 1 | 2 | 4, value: number): void {
    this.vm.pio.write(PCI_CONFIG_ADDRESS, 4, (0x80000000 | (this.slot << 11) | (reg & 0xfc)) >>> 0);
    this.vm.pio.write(PCI_CONFIG_DATA + (reg & 3), size, value);
  }

  get bar(): number {
    return (this.cfgRead(0x10, 4) & ~0xf) >>> 0;
  }

  private findCaps(): void {
    this.caps = [];
    let p = this.cfgRead(0x34, 1);
    for (let guard = 0; p && guard < 48; guard++) {
      const id = this.cfgRead(p, 1);
      if (id === PCI_CAP_ID_VNDR) {
        const type = this.cfgRead(p + 3, 1);
        this.caps.push({
          type, bar: this.cfgRead(p + 4, 1), offset: this.cfgRead(p + 8, 4), length: this.cfgRead(p + 12, 4),
          notifyMul: type === VIRTIO_PCI_CAP.NOTIFY_CFG ? this.cfgRead(p + 16, 4) : 0,
        });
      } else if (id === PCI_CAP_ID_MSIX) {
        this.msixCap = p;
      }
      p = this.cfgRead(p + 1, 1);
    }
  }

  cap(type: number): { offset: number; length: number; notifyMul: number } {
    const c = this.caps.find((x) => x.type === type);
    if (!c) throw new Error(`no virtio capability of type ${type}`);
    return c;
  }

  // --- BAR access
  common(off: number, size: 1 | 2 | 4): number { return this.vm.mmio.read(this.bar + this.cap(VIRTIO_PCI_CAP.COMMON_CFG).offset + off, size); }
  setCommon(off: number, size: 1 | 2 | 4, v: number): void { this.vm.mmio.write(this.bar + this.cap(VIRTIO_PCI_CAP.COMMON_CFG).offset + off, size, v); }
  deviceCfg(off: number, size: 1 | 2 | 4): number { return this.vm.mmio.read(this.bar + this.cap(VIRTIO_PCI_CAP.DEVICE_CFG).offset + off, size); }
  readIsr(): number { return this.vm.mmio.read(this.bar + this.cap(VIRTIO_PCI_CAP.ISR_CFG).offset, 1); }
  get status(): number { return this.common(COMMON_CFG.device_status, 1); }

  deviceFeatures(): FeatureBits {
    this.setCommon(COMMON_CFG.device_feature_select, 4, 0);
    const lo = this.common(COMMON_CFG.device_feature, 4);
    this.setCommon(COMMON_CFG.device_feature_select, 4, 1);
    return { lo, hi: this.common(COMMON_CFG.device_feature, 4) };
  }

  /** Points MSI-X vector v at LAPIC 0 with interrupt vector `apicVector`, unmasked; enables MSI-X. */
  enableMsix(vectors: number[][]): void {
    const tableBar = this.cfgRead(this.msixCap + MSIX_CAP.table, 4) & ~7;
    for (const [v, apicVector] of vectors) {
      const e = this.bar + tableBar + v * MSIX_ENTRY.size;
      this.vm.mmio.write(e + MSIX_ENTRY.addressLo, 4, 0xfee00000);
      this.vm.mmio.write(e + MSIX_ENTRY.addressHi, 4, 0);
      this.vm.mmio.write(e + MSIX_ENTRY.data, 4, apicVector);
      this.vm.mmio.write(e + MSIX_ENTRY.vectorControl, 4, 0);
    }
    this.cfgWrite(this.msixCap + MSIX_CAP.control, 2, MSIX_CONTROL_ENABLE);
  }

  /**
   * Reset and bring-up: features (the device's offer masked by `want`), queues, vectors, DRIVER_OK.
   * Returns the negotiated features.
   */
  init(opts: { want?: (f: FeatureBits) => FeatureBits; queues: number; queueSize?: number; msix?: boolean }): FeatureBits {
    this.setCommon(COMMON_CFG.device_status, 1, 0);
    this.setCommon(COMMON_CFG.device_status, 1, STATUS_ACKNOWLEDGE);
    this.setCommon(COMMON_CFG.device_status, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const offered = this.deviceFeatures();
    const f = opts.want ? opts.want(offered) : offered;
    this.setCommon(COMMON_CFG.driver_feature_select, 4, 0);
    this.setCommon(COMMON_CFG.driver_feature, 4, f.lo);
    this.setCommon(COMMON_CFG.driver_feature_select, 4, 1);
    this.setCommon(COMMON_CFG.driver_feature, 4, f.hi);
    this.setCommon(COMMON_CFG.device_status, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(this.status & STATUS_FEATURES_OK)) throw new Error('device refused our features');
    if (opts.msix) this.setCommon(COMMON_CFG.config_msix_vector, 2, 0);
    this.queues = [];
    for (let q = 0; q < opts.queues; q++) {
      this.setCommon(COMMON_CFG.queue_select, 2, q);
      const max = this.common(COMMON_CFG.queue_size, 2);
      const size = Math.min(max, opts.queueSize ?? max);
      this.setCommon(COMMON_CFG.queue_size, 2, size);
      const desc = this.alloc(size * 16, 16);
      const avail = this.alloc(availRingBytes(size), 2);
      const used = this.alloc(usedRingBytes(size), 4);
      this.vm.memory.fill(desc, size * 16);
      this.vm.memory.fill(avail, availRingBytes(size));
      this.vm.memory.fill(used, usedRingBytes(size));
      this.setCommon(COMMON_CFG.queue_desc_lo, 4, desc);
      this.setCommon(COMMON_CFG.queue_desc_hi, 4, 0);
      this.setCommon(COMMON_CFG.queue_driver_lo, 4, avail);
      this.setCommon(COMMON_CFG.queue_driver_hi, 4, 0);
      this.setCommon(COMMON_CFG.queue_device_lo, 4, used);
      this.setCommon(COMMON_CFG.queue_device_hi, 4, 0);
      if (opts.msix) this.setCommon(COMMON_CFG.queue_msix_vector, 2, q + 1);
      this.setCommon(COMMON_CFG.queue_enable, 2, 1);
      this.queues.push({ index: q, size, desc, avail, used, availIdx: 0, usedSeen: 0, free: [...Array(size).keys()], buffers: new Map() });
    }
    this.setCommon(COMMON_CFG.device_status, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    return f;
  }

  private writeDesc(q: DriverQueue, i: number, addr: number, len: number, flags: number, next: number): void {
    const v = this.vm.memory.view(q.desc + i * 16, 16);
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint32(8, len, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
  }

  private publish(q: DriverQueue, head: number): void {
    this.vm.memory.view(q.avail + 4 + (q.availIdx % q.size) * 2, 2).setUint16(0, head, true);
    q.availIdx = (q.availIdx + 1) & 0xffff;
    this.vm.memory.view(q.avail + 2, 2).setUint16(0, q.availIdx, true);
  }

  /** Posts `count` receive buffers of `bytes` each (one descriptor per buffer). */
  postRx(qi: number, count: number, bytes = 2048): void {
    const q = this.queues[qi];
    for (let k = 0; k < count; k++) {
      const id = q.free.shift();
      if (id === undefined) throw new Error(`queue ${qi} has no free descriptor`);
      const gpa = this.alloc(bytes, 64);
      this.writeDesc(q, id, gpa, bytes, VRING_DESC_F_WRITE, 0);
      q.buffers.set(id, { gpa, len: bytes });
      this.publish(q, id);
    }
  }

  /** Queues one frame for transmit: a header descriptor and a data descriptor, chained. */
  postTx(qi: number, frame: Buffer): void {
    const q = this.queues[qi];
    const a = q.free.shift();
    const b = q.free.shift();
    if (a === undefined || b === undefined) throw new Error(`queue ${qi} has no free descriptors`);
    const hdr = this.alloc(HDR, 16);
    this.vm.memory.fill(hdr, HDR);
    const data = this.alloc(frame.length, 16);
    this.vm.memory.write(data, frame);
    this.writeDesc(q, a, hdr, HDR, VRING_DESC_F_NEXT, b);
    this.writeDesc(q, b, data, frame.length, 0, 0);
    q.buffers.set(a, { gpa: hdr, len: HDR });
    q.buffers.set(b, { gpa: data, len: frame.length });
    this.publish(q, a);
  }

  /** Notifies queue `qi` through the MMIO notify address (as a vCPU exit would deliver it). */
  notifyMmio(qi: number): void {
    const n = this.cap(VIRTIO_PCI_CAP.NOTIFY_CFG);
    this.vm.mmio.write(this.bar + n.offset + qi * n.notifyMul, 2, qi);
  }

  /** Notifies through the queue's ioeventfd, as KVM does when the guest writes the notify address. */
  notifyEventfd(kickFd: number): void {
    native.eventfdWrite(kickFd, 1);
  }

  usedIdx(qi: number): number {
    return this.vm.memory.view(this.queues[qi].used + 2, 2).getUint16(0, true);
  }

  /** New used elements since the last call; RX buffers are recycled to the free list. */
  takeUsed(qi: number): UsedElem[] {
    const q = this.queues[qi];
    const out: UsedElem[] = [];
    const idx = this.usedIdx(qi);
    while (q.usedSeen !== idx) {
      const v = this.vm.memory.view(q.used + 4 + (q.usedSeen % q.size) * 8, 8);
      const id = v.getUint32(0, true);
      const len = v.getUint32(4, true);
      const buf = q.buffers.get(id);
      out.push({ id, len, gpa: buf?.gpa ?? -1 });
      // Free the chain (tx: two descriptors; rx: one).
      const d = this.vm.memory.view(q.desc + id * 16, 16);
      q.free.push(id);
      if (d.getUint16(12, true) & VRING_DESC_F_NEXT) q.free.push(d.getUint16(14, true));
      q.usedSeen = (q.usedSeen + 1) & 0xffff;
    }
    // EVENT_IDX: interrupt me when the device uses the next entry (Linux's virtqueue_enable_cb).
    this.vm.memory.view(q.avail + 4 + 2 * q.size, 2).setUint16(0, q.usedSeen, true);
    return out;
  }

  /** The frame (after the 12-byte header) in a used RX buffer, and its num_buffers. */
  rxFrame(e: UsedElem): { frame: Buffer; numBuffers: number } {
    const all = this.vm.memory.read(e.gpa, e.len);
    return { frame: all.subarray(HDR), numBuffers: all.readUInt16LE(10) };
  }
}

/** Polls `cond` on the event loop until true or `timeoutMs`. */
export async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Software-enables vCPU 0's LAPIC so injected fixed interrupts land in its IRR. */
export function enableLapic(vcpuFd: number): void {
  const lapic = native.kvmGetLapic(vcpuFd);
  const SVR = 0xf0;
  lapic.writeUInt32LE(lapic.readUInt32LE(SVR) | 0x1ff, SVR);
  native.kvmSetLapic(vcpuFd, lapic);
}

/** Whether `vector` is pending in vCPU's LAPIC IRR. */
export function lapicIrrHas(vcpuFd: number, vector: number): boolean {
  const lapic = native.kvmGetLapic(vcpuFd);
  const IRR = 0x200;
  return ((lapic.readUInt32LE(IRR + 0x10 * (vector >>> 5)) >>> (vector & 31)) & 1) === 1;
}

/**
 * Split virtqueues (virtio 1.2 §2.7) read and written in guest RAM, with every
 * guest-controlled value checked: ring addresses and alignment, queue size, the avail
 * index (it may run ahead by at most the queue size), descriptor heads and `next` links,
 * chain length (bounded by the queue size, which also catches loops), indirect tables
 * (length, alignment, no nesting), and every buffer's address and length (inside RAM).
 * A violation throws {@link VirtioViolation}; the transport then marks the device
 * DEVICE_NEEDS_RESET and stops it.
 *
 * Hot path: chains are written as (offset, length) pairs into a caller's preallocated
 * {@link IovTable}, offsets into one {@link DmaSpace} buffer, ready for readvBatch /
 * writevBatch. Nothing is allocated per packet.
 */
import { BatonError } from '../../../util/errors';
import { GuestMemory, GuestMemoryError } from '../../guest-memory';
import {
  VIRTIO_MSI_NO_VECTOR, VRING_ALIGN, VRING_AVAIL, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE, VRING_DESC_SIZE, VRING_USED, availRingBytes, usedRingBytes,
} from './constants';

/** Largest queue we offer; also the longest chain we accept (virtio bounds a chain by the queue size). */
export const MAX_QUEUE_SIZE = 256;

/** {@link Virtqueue.pop}: nothing available. */
export const POP_EMPTY = -1;
/** {@link Virtqueue.pop}: the next chain needs more pairs than allowed; it stays available. */
export const POP_NO_ROOM = -2;

/** Chain directions {@link Virtqueue.pop} accepts. */
export const DEVICE_READS = 0;
export const DEVICE_WRITES = 1;
export const READS_THEN_WRITES = 2;
export type ChainDirection = typeof DEVICE_READS | typeof DEVICE_WRITES | typeof READS_THEN_WRITES;
/** Most header bytes a pop may skip (the virtio-net header). */
export const MAX_SKIP = 12;

export class VirtioViolation extends BatonError {
  constructor(where: string, what: string) {
    super('EVIRTIO', `${where}: ${what}`, { where });
  }
}

/**
 * Guest RAM as one byte buffer for readv/writev, addressed by "DMA offsets". A single-region
 * guest uses its region's mapping; a guest with RAM both below and above the PCI hole gets
 * one extra mapping of the whole memory fd (fd offsets are contiguous), so a chain may span
 * both regions and still be one iov table.
 */
export class DmaSpace {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly u16: Uint16Array;
  private readonly gpaStart: Float64Array;
  private readonly gpaEnd: Float64Array;
  private readonly base: Float64Array;

  /** `wholeRam`: all of guest RAM in fd-offset order (a single region's own mapping, or one more). */
  constructor(memory: GuestMemory, wholeRam: Uint8Array) {
    const regions = memory.regions;
    this.bytes = wholeRam;
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.u16 = new Uint16Array(this.bytes.buffer, this.bytes.byteOffset, Math.floor(this.bytes.byteLength / 2));
    this.gpaStart = Float64Array.from(regions.map((r) => r.gpa));
    this.gpaEnd = Float64Array.from(regions.map((r) => r.gpa + r.size));
    this.base = Float64Array.from(regions.length === 1 ? [0] : regions.map((r) => r.fdOffset));
  }

  /** The DMA offset of [gpa, gpa+len), which must lie in one RAM region; throws GuestMemoryError. */
  offset(gpa: number, len: number): number {
    for (let i = 0; i < this.gpaStart.length; i++) {
      if (gpa >= this.gpaStart[i] && gpa + len <= this.gpaEnd[i]) return this.base[i] + (gpa - this.gpaStart[i]);
    }
    throw new GuestMemoryError(gpa, len);
  }
}

/**
 * Where popped chains go: (offset, length) pairs for readv/writev and, per packet, how many
 * pairs it has. Sized once; `reset()` before each batch.
 */
export class IovTable {
  readonly iovs: Float64Array;
  readonly iovCounts: Uint32Array;
  readonly lengths: Int32Array;
  /** Pairs used so far. */
  pairs = 0;
  /** Capacity (bytes, skip excluded) of the chain popped last. */
  lastChainBytes = 0;
  /** Pairs of the last chain before its first device-writable buffer (READS_THEN_WRITES). */
  lastReadablePairs = 0;
  /** DMA offsets of skipped header bytes, MAX_SKIP per slot. */
  readonly skipped: Float64Array;

  constructor(readonly maxPairs: number, readonly maxPackets: number) {
    this.iovs = new Float64Array(maxPairs * 2);
    this.iovCounts = new Uint32Array(maxPackets);
    this.lengths = new Int32Array(maxPackets);
    this.skipped = new Float64Array(maxPackets * MAX_SKIP);
  }

  reset(): void {
    this.pairs = 0;
  }
}

export interface VirtqueueState {
  size: number;
  enabled: boolean;
  desc: number;
  avail: number;
  used: number;
  msixVector: number;
  lastAvailIdx: number;
  usedIdx: number;
  signalledUsed: number;
  signalledUsedValid: boolean;
}

export class Virtqueue {
  // Programmed by the driver through the common config.
  size: number;
  enabled = false;
  descAddr = 0;
  availAddr = 0;
  usedAddr = 0;
  msixVector = VIRTIO_MSI_NO_VECTOR;
  // Device-side progress.
  lastAvailIdx = 0;
  usedIdx = 0;
  /** Used index when we last interrupted the driver (EVENT_IDX's old_idx). */
  private signalledUsed = 0;
  private signalledUsedValid = false;
  private eventIdx = false;
  private indirect = false;
  private dma?: DmaSpace;
  private descOff = 0;
  private availOff = 0;
  private usedOff = 0;
  /** Interrupts we decided to send (stats and tests). */
  interrupts = 0;

  constructor(
    readonly index: number,
    readonly name: string,
    readonly maxSize: number = MAX_QUEUE_SIZE,
  ) {
    this.size = maxSize;
  }

  get ready(): boolean {
    return this.dma !== undefined;
  }

  /** Driver reset: back to power-on values. */
  reset(): void {
    this.size = this.maxSize;
    this.enabled = false;
    this.descAddr = this.availAddr = this.usedAddr = 0;
    this.msixVector = VIRTIO_MSI_NO_VECTOR;
    this.lastAvailIdx = this.usedIdx = this.signalledUsed = 0;
    this.signalledUsedValid = false;
    this.dma = undefined;
  }

  /** Validates the driver's ring set-up and binds the rings to RAM (at DRIVER_OK or on restore). */
  activate(dma: DmaSpace, eventIdx: boolean, indirect: boolean): void {
    const size = this.size;
    if (size < 1 || size > this.maxSize || (size & (size - 1)) !== 0) {
      throw new VirtioViolation(this.name, `queue size ${size} is not a power of two in 1..${this.maxSize}`);
    }
    const areas: [string, number, number, number][] = [
      ['descriptor table', this.descAddr, size * VRING_DESC_SIZE, VRING_ALIGN.desc],
      ['driver (avail) ring', this.availAddr, availRingBytes(size), VRING_ALIGN.avail],
      ['device (used) ring', this.usedAddr, usedRingBytes(size), VRING_ALIGN.used],
    ];
    const offs: number[] = [];
    for (const [what, addr, len, align] of areas) {
      if (addr % align !== 0) throw new VirtioViolation(this.name, `${what} at 0x${addr.toString(16)} is not ${align}-byte aligned`);
      try {
        offs.push(dma.offset(addr, len));
      } catch {
        throw new VirtioViolation(this.name, `${what} 0x${addr.toString(16)}+${len} is not in guest RAM`);
      }
    }
    [this.descOff, this.availOff, this.usedOff] = offs;
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    this.dma = dma;
  }

  deactivate(): void {
    this.dma = undefined;
  }

  /** Chains the driver made available and we have not taken; throws when the index is implausible. */
  pending(): number {
    const dma = this.dma!;
    const availIdx = Atomics.load(dma.u16, (this.availOff + VRING_AVAIL.idx) >>> 1);
    const n = (availIdx - this.lastAvailIdx) & 0xffff;
    if (n > this.size) throw new VirtioViolation(this.name, `avail idx ${availIdx} is ${n} ahead of ${this.lastAvailIdx}, more than the queue size ${this.size}`);
    return n;
  }

  /**
   * Takes the next available chain into `table` (appending pairs) and returns its head, or
   * POP_EMPTY, or POP_NO_ROOM when the chain needs more than `maxPairs` more pairs (it
   * stays available). `dir` is the direction the buffers must have: DEVICE_WRITES (RX),
   * DEVICE_READS (TX), or READS_THEN_WRITES (control: request, then the ack). The first
   * `skip` bytes are left out of the pairs; their offsets go to `table.skipped` at
   * `skipSlot * MAX_SKIP` (so a header can be written there later).
   */
  pop(table: IovTable, dir: ChainDirection, maxPairs: number, skip = 0, skipSlot = 0): number {
    if (this.pending() === 0) return POP_EMPTY;
    const dma = this.dma!;
    const v = dma.view;
    const size = this.size;
    const head = v.getUint16(this.availOff + VRING_AVAIL.ring + (this.lastAvailIdx & (size - 1)) * 2, true);
    if (head >= size) throw new VirtioViolation(this.name, `avail ring names descriptor ${head}, queue size is ${size}`);
    const start = table.pairs;
    let pairs = 0;
    let bytes = 0;
    let readablePairs = -1;
    let skipped = 0;
    let tableOff = this.descOff;
    let tableLen = size;
    let i = head;
    let seen = 0;
    let inIndirect = false;
    for (;;) {
      if (++seen > size) throw new VirtioViolation(this.name, `descriptor chain at ${head} is longer than the queue size ${size} (a loop?)`);
      const d = tableOff + i * VRING_DESC_SIZE;
      const addr = v.getUint32(d, true) + v.getUint32(d + 4, true) * 0x1_0000_0000;
      const len = v.getUint32(d + 8, true);
      const flags = v.getUint16(d + 12, true);
      if (flags & VRING_DESC_F_INDIRECT) {
        if (!this.indirect) throw new VirtioViolation(this.name, `indirect descriptor at ${i} but VIRTIO_F_INDIRECT_DESC was not negotiated`);
        if (inIndirect) throw new VirtioViolation(this.name, 'nested indirect descriptor table');
        if (flags & VRING_DESC_F_NEXT) throw new VirtioViolation(this.name, `indirect descriptor at ${i} also has NEXT set`);
        if (len === 0 || len % VRING_DESC_SIZE !== 0 || len / VRING_DESC_SIZE > size) {
          throw new VirtioViolation(this.name, `indirect table length ${len} is not a multiple of 16 in 16..${size * 16}`);
        }
        if (addr % VRING_ALIGN.desc !== 0) throw new VirtioViolation(this.name, `indirect table at 0x${addr.toString(16)} is not 16-byte aligned`);
        try {
          tableOff = dma.offset(addr, len);
        } catch {
          throw new VirtioViolation(this.name, `indirect table 0x${addr.toString(16)}+${len} is not in guest RAM`);
        }
        tableLen = len / VRING_DESC_SIZE;
        inIndirect = true;
        i = 0;
        continue;
      }
      const writes = (flags & VRING_DESC_F_WRITE) !== 0;
      if (dir === READS_THEN_WRITES) {
        if (writes && readablePairs < 0) readablePairs = pairs;
        else if (!writes && readablePairs >= 0) throw new VirtioViolation(this.name, `descriptor ${i} is device-readable after a device-writable one`);
      } else if (writes !== (dir === DEVICE_WRITES)) {
        throw new VirtioViolation(this.name, `descriptor ${i} is ${writes ? 'device-writable' : 'device-readable'} in a ${dir === DEVICE_WRITES ? 'receive' : 'transmit'} chain`);
      }
      if (len > 0) {
        let off: number;
        try {
          off = dma.offset(addr, len);
        } catch {
          throw new VirtioViolation(this.name, `descriptor ${i} buffer 0x${addr.toString(16)}+${len} is not in guest RAM`);
        }
        bytes += len;
        let o = off, l = len;
        while (skipped < skip && l > 0) {
          table.skipped[skipSlot * MAX_SKIP + skipped++] = o++;
          l--;
        }
        if (l > 0) {
          if (pairs >= maxPairs || start + pairs >= table.maxPairs) return POP_NO_ROOM; // leave it available
          table.iovs[(start + pairs) * 2] = o;
          table.iovs[(start + pairs) * 2 + 1] = l;
          pairs++;
        }
      }
      if (!(flags & VRING_DESC_F_NEXT)) break;
      i = v.getUint16(d + 14, true);
      if (i >= tableLen) throw new VirtioViolation(this.name, `descriptor next ${i} is outside the ${inIndirect ? 'indirect table' : 'queue'} (${tableLen})`);
    }
    if (skipped < skip) throw new VirtioViolation(this.name, `chain at ${head} holds ${bytes} bytes, less than the ${skip}-byte header`);
    table.pairs = start + pairs;
    table.lastChainBytes = bytes - skip;
    table.lastReadablePairs = readablePairs < 0 ? pairs : readablePairs;
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    return head;
  }

  /** Gives back the last `n` chains taken (they were not used). */
  rewind(n: number): void {
    this.lastAvailIdx = (this.lastAvailIdx - n) & 0xffff;
  }

  /** Writes a used element; the driver sees it after {@link publishUsed}. */
  pushUsed(head: number, len: number): void {
    const v = this.dma!.view;
    const e = this.usedOff + VRING_USED.ring + (this.usedIdx & (this.size - 1)) * VRING_USED.entrySize;
    v.setUint32(e + VRING_USED.elemId, head, true);
    v.setUint32(e + VRING_USED.elemLen, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /** Makes the used elements visible (the idx store orders after the element stores). */
  publishUsed(): void {
    Atomics.store(this.dma!.u16, (this.usedOff + VRING_USED.idx) >>> 1, this.usedIdx);
  }

  /**
   * Whether the driver wants an interrupt for what we published since the last one:
   * EVENT_IDX's used_event test, or the avail ring's NO_INTERRUPT flag.
   */
  needsInterrupt(): boolean {
    const dma = this.dma!;
    const now = this.usedIdx;
    if (!this.eventIdx) {
      const flags = Atomics.load(dma.u16, (this.availOff + VRING_AVAIL.flags) >>> 1);
      if (this.signalledUsedValid && this.signalledUsed === now) return false;
      this.signalledUsed = now;
      this.signalledUsedValid = true;
      return (flags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    }
    const old = this.signalledUsed;
    const valid = this.signalledUsedValid;
    this.signalledUsed = now;
    this.signalledUsedValid = true;
    if (!valid) return true;
    if (old === now) return false;
    const usedEvent = Atomics.load(dma.u16, (this.availOff + VRING_AVAIL.ring + 2 * this.size) >>> 1);
    // vring_need_event: interrupt if used_event lies in [old, now).
    return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /**
   * Asks the driver to notify us when it adds past what we have taken (EVENT_IDX's
   * avail_event); returns true when more is already available, so the caller keeps going
   * instead of waiting for a notification that will not come.
   */
  armNotification(): boolean {
    if (this.eventIdx) Atomics.store(this.dma!.u16, (this.usedOff + VRING_USED.ring + VRING_USED.entrySize * this.size) >>> 1, this.lastAvailIdx);
    return this.pending() > 0;
  }

  save(): VirtqueueState {
    return {
      size: this.size, enabled: this.enabled, desc: this.descAddr, avail: this.availAddr, used: this.usedAddr,
      msixVector: this.msixVector, lastAvailIdx: this.lastAvailIdx, usedIdx: this.usedIdx,
      signalledUsed: this.signalledUsed, signalledUsedValid: this.signalledUsedValid,
    };
  }

  /** Restores the registers and progress; the caller activates when the device is live. */
  restore(s: VirtqueueState): void {
    this.size = s.size;
    this.enabled = s.enabled;
    this.descAddr = s.desc;
    this.availAddr = s.avail;
    this.usedAddr = s.used;
    this.msixVector = s.msixVector;
    this.lastAvailIdx = s.lastAvailIdx & 0xffff;
    this.usedIdx = s.usedIdx & 0xffff;
    this.signalledUsed = s.signalledUsed & 0xffff;
    this.signalledUsedValid = s.signalledUsedValid;
    this.dma = undefined;
  }
}

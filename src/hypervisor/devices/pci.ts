/**
 * PCI host with configuration mechanism #1 (address at 0xCF8, data at 0xCFC-0xCFF), one
 * bus, and a config-space helper that devices use for their headers and BARs. Offsets and
 * values come from the guest: unknown devices read as all ones, writes to read-only fields
 * are dropped, BAR sizing works the standard way (write all ones, read the size mask).
 */
import { BusDevice } from './io-bus';

export const PCI_CONFIG_ADDRESS = 0xcf8;
export const PCI_CONFIG_DATA = 0xcfc;

export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CLASS_DEVICE = 0x0a;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BAR0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;
export const PCI_STATUS_CAP_LIST = 0x10;
const BAR_COUNT = 6;

export interface PciBar {
  size: number;
  /** memory BARs only here (virtio-pci uses 32-bit memory BARs). */
  onMove(address: number): void;
}

/** 256 bytes of type-0 config space with write masks and BARs. */
export class PciConfigSpace {
  readonly bytes = new Uint8Array(256);
  private readonly view = new DataView(this.bytes.buffer);
  /** Bits the guest may change. */
  private readonly writable = new Uint8Array(256);
  readonly bars: (PciBar | undefined)[] = new Array(BAR_COUNT).fill(undefined);

  constructor(ids: { vendor: number; device: number; classCode: number; revision?: number; subsystemVendor?: number; subsystem?: number }) {
    this.view.setUint16(PCI_VENDOR_ID, ids.vendor, true);
    this.view.setUint16(PCI_DEVICE_ID, ids.device, true);
    this.bytes[PCI_REVISION_ID] = ids.revision ?? 0;
    this.view.setUint32(PCI_REVISION_ID, (ids.classCode << 8) | (ids.revision ?? 0), true);
    this.view.setUint16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystemVendor ?? 0, true);
    this.view.setUint16(PCI_SUBSYSTEM_ID, ids.subsystem ?? 0, true);
    this.view.setUint16(PCI_COMMAND, 0, true);
    this.writable[PCI_COMMAND] = 0x07; // I/O, memory, bus master
    this.writable[PCI_COMMAND + 1] = 0x04; // interrupt disable
    this.writable[PCI_INTERRUPT_LINE] = 0xff;
  }

  u8(off: number): number { return this.bytes[off]; }
  u16(off: number): number { return this.view.getUint16(off, true); }
  u32(off: number): number { return this.view.getUint32(off, true); }
  set8(off: number, v: number): void { this.bytes[off] = v; }
  set16(off: number, v: number): void { this.view.setUint16(off, v, true); }
  set32(off: number, v: number): void { this.view.setUint32(off, v >>> 0, true); }

  setInterruptPin(pin: number, line: number): void {
    this.bytes[PCI_INTERRUPT_PIN] = pin;
    this.bytes[PCI_INTERRUPT_LINE] = line;
  }

  /** A 32-bit, non-prefetchable memory BAR; size must be a power of two >= 16. */
  addMemoryBar(index: number, bar: PciBar): void {
    this.bars[index] = bar;
    const off = PCI_BAR0 + index * 4;
    this.set32(off, 0);
    const mask = ~(bar.size - 1) >>> 0;
    for (let i = 0; i < 4; i++) this.writable[off + i] = (mask >>> (i * 8)) & 0xff;
  }

  barAddress(index: number): number {
    return (this.u32(PCI_BAR0 + index * 4) & ~0xf) >>> 0;
  }

  /** Adds a capability to the list; returns its offset. */
  addCapability(offset: number, id: number, body: Uint8Array, writableMask?: Uint8Array): number {
    this.bytes[offset] = id;
    this.bytes[offset + 1] = this.bytes[PCI_CAPABILITY_LIST];
    this.bytes.set(body, offset + 2);
    if (writableMask) this.writable.set(writableMask, offset + 2);
    this.bytes[PCI_CAPABILITY_LIST] = offset;
    this.set16(PCI_STATUS, this.u16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    return offset;
  }

  read(offset: number, size: number): number {
    if (offset < 0 || offset + size > 256) return 0xffffffff;
    if (size === 1) return this.bytes[offset];
    if (size === 2) return this.u16(offset);
    return this.u32(offset);
  }

  write(offset: number, size: number, value: number): void {
    if (offset < 0 || offset + size > 256) return;
    const barsBefore = this.bars.map((_, i) => this.barAddress(i));
    for (let i = 0; i < size; i++) {
      const mask = this.writable[offset + i];
      const b = (value >>> (i * 8)) & 0xff;
      this.bytes[offset + i] = (this.bytes[offset + i] & ~mask) | (b & mask);
    }
    this.bars.forEach((bar, i) => {
      if (bar && this.barAddress(i) !== barsBefore[i]) bar.onMove(this.barAddress(i));
    });
  }
}

export interface PciDevice {
  readonly name: string;
  readonly config: PciConfigSpace;
  /** Called after every config write (command register, capabilities). */
  configWritten?(offset: number, size: number): void;
}

/** The host bridge at 00.0 (Intel 440FX ids, what Linux expects to see first). */
export function hostBridge(): PciDevice {
  return { name: 'host-bridge', config: new PciConfigSpace({ vendor: 0x8086, device: 0x1237, classCode: 0x060000 }) };
}

export class PciHost {
  private address = 0;
  private readonly slots: (PciDevice | undefined)[] = new Array(32).fill(undefined);

  constructor() {
    this.slots[0] = hostBridge();
  }

  /** Places a device in the first free slot (or `slot`), returns the slot. */
  add(device: PciDevice, slot?: number): number {
    const s = slot ?? this.slots.findIndex((d) => d === undefined);
    if (s < 0 || s > 31 || this.slots[s]) throw new Error(`PCI slot ${slot ?? '(any)'} is not free for ${device.name}`);
    this.slots[s] = device;
    return s;
  }

  remove(slot: number): void {
    if (slot === 0) throw new Error('the host bridge cannot be removed');
    this.slots[slot] = undefined;
  }

  devices(): { slot: number; device: PciDevice }[] {
    return this.slots.flatMap((d, slot) => (d ? [{ slot, device: d }] : []));
  }

  /** 0xCF8: the 32-bit address register. */
  readonly addressPort: BusDevice = {
    read: (offset, size) => (size === 4 && offset === 0 ? this.address : 0xffffffff),
    write: (offset, size, value) => { if (size === 4 && offset === 0) this.address = value >>> 0; },
  };

  /** 0xCFC-0xCFF: the data window for the register the address selects. */
  readonly dataPort: BusDevice = {
    read: (offset, size) => {
      const target = this.target(offset);
      return target ? target.device.config.read(target.reg, size) : 0xffffffff;
    },
    write: (offset, size, value) => {
      const target = this.target(offset);
      if (!target) return;
      target.device.config.write(target.reg, size, value);
      target.device.configWritten?.(target.reg, size);
    },
  };

  private target(offset: number): { device: PciDevice; reg: number } | undefined {
    const a = this.address;
    if (!(a & 0x80000000)) return undefined;
    const bus = (a >>> 16) & 0xff;
    const slot = (a >>> 11) & 0x1f;
    const fn = (a >>> 8) & 0x7;
    if (bus !== 0 || fn !== 0) return undefined;
    const device = this.slots[slot];
    return device ? { device, reg: (a & 0xfc) + offset } : undefined;
  }
}

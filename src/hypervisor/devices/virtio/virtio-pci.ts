/**
 * The modern virtio-pci transport (virtio 1.2 §4.1), written once and configured per device
 * through {@link VirtioDeviceModel}. One 32-bit memory BAR holds the common config, ISR,
 * device config, notify area and the MSI-X table and PBA; vendor capabilities point at them.
 *
 * Data path off the vCPU exits: each queue's notify address has a KVM ioeventfd (watched
 * on the event loop), each MSI-X vector an irqfd on a GSI routed to the vector's message.
 * Without MSI-X the device falls back to INTx: ISR bits plus a level on an IOAPIC pin.
 *
 * A guest that breaks the rules (bad ring addresses, hostile descriptors) gets
 * DEVICE_NEEDS_RESET and a config interrupt, and the device stops until the driver resets
 * it; nothing it does can throw out of the event loop.
 */
import { native } from '../../../native';
import type { FdWatch } from '../../../native/io';
import { loggerFor } from '../../../util/logger';
import { GuestMemoryError } from '../../guest-memory';
import { BusDevice, IoBus, IrqLine } from '../io-bus';
import { PCI_COMMAND, PciConfigSpace, PciDevice } from '../pci';
import {
  COMMON_CFG, FeatureBits, ISR_CONFIG, ISR_QUEUE, MSIX_CAP, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MSIX_ENTRY,
  MSIX_VECTOR_MASKED, MSI_ADDRESS_BASE, MSI_ADDRESS_MASK, PCI_CAP_ID_MSIX, PCI_CAP_ID_VNDR, STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_CAP, VIRTIO_PCI_CAP_LAYOUT,
  VIRTIO_PCI_MODERN_DEVICE_BASE, VIRTIO_PCI_NOTIFY_CAP_SIZE, VIRTIO_PCI_NOTIFY_MULTIPLIER_OFFSET, VIRTIO_PCI_VENDOR, hasFeature,
  VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
} from './constants';
import { GsiRouter } from './gsi-router';
import { DmaSpace, Virtqueue, VirtioViolation } from './virtqueue';

const log = loggerFor('virtio-pci');

/** BAR 0 layout: one page per structure. */
export const BAR_LAYOUT = {
  common: 0x0000, isr: 0x1000, device: 0x2000, notify: 0x3000, msixTable: 0x4000, msixPba: 0x5000, size: 0x8000,
} as const;
const REGION_SIZE = 0x1000;
/** Queue n's notify address is notify + n * multiplier. */
export const NOTIFY_OFF_MULTIPLIER = 4;
const BAR_INDEX = 0;
/** Capability placement in config space (after the 64-byte header). */
const CAP_OFFSETS = { msix: 0x40, common: 0x50, notify: 0x60, isr: 0x78, device: 0x88 } as const;
const PCI_COMMAND_MEMORY = 0x2;
const PCI_COMMAND_INTX_DISABLE = 0x400;
const PCI_INTERRUPT_PIN_INTA = 1;
const KVM_CAP_IOEVENTFD_ANY_LENGTH = 122;

/** What a virtio device (net, ...) plugs into the transport. */
export interface VirtioDeviceModel {
  readonly deviceType: number;
  readonly pciClass: number;
  readonly queues: readonly Virtqueue[];
  /** Bytes of device-specific config. */
  readonly configSize: number;
  deviceFeatures(): FeatureBits;
  configRead(offset: number, size: number): number;
  configWrite(offset: number, size: number, value: number): void;
  /** Why the driver's feature choice is refused at FEATURES_OK, or undefined to accept. */
  checkFeatures(driver: FeatureBits): string | undefined;
  /** DRIVER_OK: start moving data (queues are active). */
  activate(features: FeatureBits): void;
  /** Driver reset or NEEDS_RESET: stop every data path. */
  quiesce(): void;
  /** A queue notification arrived (ioeventfd or MMIO). */
  queueNotify(queue: number): void;
}

/** What the transport needs from the VM: no Vm type, so it stays testable and VM-agnostic. */
export interface VirtioPciHost {
  vmFd: number;
  mmio: IoBus;
  router: GsiRouter;
  dma: DmaSpace;
  /** INTx fallback: the level on this line follows (ISR != 0). */
  intx: IrqLine;
  intxGsi: number;
}

interface Register {
  offset: number;
  size: 1 | 2 | 4;
  name: string;
  read(): number;
  write?(value: number): void;
}

export interface VirtioPciState {
  config: string;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  driverFeatures: FeatureBits;
  status: number;
  configGeneration: number;
  configVector: number;
  queueSelect: number;
  msixTable: string;
  msixPba: string;
  isr: number;
  stopped: boolean;
  queues: ReturnType<Virtqueue['save']>[];
}

export class VirtioPciTransport implements PciDevice {
  readonly config: PciConfigSpace;
  readonly numVectors: number;
  private readonly commonRegisters: Register[];
  // Driver-visible transport state.
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  driverFeatures: FeatureBits = { lo: 0, hi: 0 };
  status = 0;
  configGeneration = 0;
  configVector = VIRTIO_MSI_NO_VECTOR;
  private queueSelect = 0;
  isr = 0;
  /** Set on a guest violation: no data moves until the driver resets the device. */
  stopped = false;
  private readonly msixTable: Uint8Array;
  private readonly msixView: DataView;
  private readonly msixPba: Uint8Array;
  private readonly routeDirty: Uint8Array;
  // KVM plumbing.
  private readonly vectorGsi: number[] = [];
  private readonly vectorIrqFd: number[] = [];
  private readonly kickFds: number[] = [];
  private readonly kickWatches: FdWatch[] = [];
  private mappedAt = -1;
  private destroyed = false;
  private readonly ioeventfdLen: number;
  private intxLevel = false;
  private readonly barDevice: BusDevice;
  /** Interrupts sent per MSI-X vector, INTx assertions, notifications seen (stats and tests). */
  readonly stats = { vectorSignals: [] as number[], intxAssertions: 0, kicks: 0, mmioNotifies: 0, violations: 0, lastViolation: '' };

  constructor(
    readonly name: string,
    private readonly host: VirtioPciHost,
    private readonly model: VirtioDeviceModel,
  ) {
    const queues = model.queues.length;
    this.numVectors = queues + 1;
    this.msixTable = new Uint8Array(this.numVectors * MSIX_ENTRY.size);
    this.msixView = new DataView(this.msixTable.buffer);
    this.msixPba = new Uint8Array(Math.ceil(this.numVectors / 64) * 8);
    this.routeDirty = new Uint8Array(this.numVectors);
    this.stats.vectorSignals = new Array(this.numVectors).fill(0);
    this.config = this.buildConfigSpace();
    this.commonRegisters = this.buildCommonRegisters();
    this.barDevice = { read: (o, s) => this.barRead(o, s), write: (o, s, v) => this.barWrite(o, s, v) };
    this.ioeventfdLen = native.kvmCheckExtension(host.vmFd, KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0 ? 0 : 2;
    this.resetMsix();
    this.createKvmPlumbing();
  }

  // ---------------------------------------------------------------- config space

  private buildConfigSpace(): PciConfigSpace {
    const cs = new PciConfigSpace({
      vendor: VIRTIO_PCI_VENDOR, device: VIRTIO_PCI_MODERN_DEVICE_BASE + this.model.deviceType, classCode: this.model.pciClass,
      revision: 1, subsystemVendor: VIRTIO_PCI_VENDOR, subsystem: 0x1100,
    });
    cs.addMemoryBar(BAR_INDEX, { size: BAR_LAYOUT.size, onMove: () => this.updateMapping() });
    cs.setInterruptPin(PCI_INTERRUPT_PIN_INTA, this.host.intxGsi);
    const vcap = (type: number, offset: number, length: number, capLen = 16): Uint8Array => {
      const b = new Uint8Array(capLen);
      const v = new DataView(b.buffer);
      VIRTIO_PCI_CAP_LAYOUT.assign(v, 0, { cap_len: capLen, cfg_type: type, bar: BAR_INDEX, offset, length });
      return b;
    };
    const body = (full: Uint8Array): Uint8Array => full.subarray(2);
    cs.addCapability(CAP_OFFSETS.device, PCI_CAP_ID_VNDR, body(vcap(VIRTIO_PCI_CAP.DEVICE_CFG, BAR_LAYOUT.device, Math.max(this.model.configSize, 1))));
    cs.addCapability(CAP_OFFSETS.isr, PCI_CAP_ID_VNDR, body(vcap(VIRTIO_PCI_CAP.ISR_CFG, BAR_LAYOUT.isr, 1)));
    const notify = vcap(VIRTIO_PCI_CAP.NOTIFY_CFG, BAR_LAYOUT.notify, this.model.queues.length * NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_NOTIFY_CAP_SIZE);
    new DataView(notify.buffer).setUint32(VIRTIO_PCI_NOTIFY_MULTIPLIER_OFFSET, NOTIFY_OFF_MULTIPLIER, true);
    cs.addCapability(CAP_OFFSETS.notify, PCI_CAP_ID_VNDR, body(notify));
    cs.addCapability(CAP_OFFSETS.common, PCI_CAP_ID_VNDR, body(vcap(VIRTIO_PCI_CAP.COMMON_CFG, BAR_LAYOUT.common, COMMON_CFG.size)));
    // MSI-X: control (table size - 1; enable and function mask writable), table and PBA in BAR 0.
    const msix = new Uint8Array(MSIX_CAP.size - 2);
    const mv = new DataView(msix.buffer);
    mv.setUint16(MSIX_CAP.control - 2, this.numVectors - 1, true);
    mv.setUint32(MSIX_CAP.table - 2, BAR_LAYOUT.msixTable | BAR_INDEX, true);
    mv.setUint32(MSIX_CAP.pba - 2, BAR_LAYOUT.msixPba | BAR_INDEX, true);
    const writable = new Uint8Array(msix.length);
    writable[MSIX_CAP.control - 2 + 1] = (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) >>> 8;
    cs.addCapability(CAP_OFFSETS.msix, PCI_CAP_ID_MSIX, msix, writable);
    return cs;
  }

  private get msixControl(): number {
    return this.config.u16(CAP_OFFSETS.msix + MSIX_CAP.control);
  }

  get msixEnabled(): boolean {
    return (this.msixControl & MSIX_CONTROL_ENABLE) !== 0;
  }

  /** Called by PciHost after every config write. */
  configWritten(offset: number, size: number): void {
    if (offset <= PCI_COMMAND + 1 && offset + size > PCI_COMMAND) {
      this.updateMapping();
      this.updateIntx();
    }
    const ctl = CAP_OFFSETS.msix + MSIX_CAP.control;
    if (offset <= ctl + 1 && offset + size > ctl) {
      // Enabling MSI-X or lifting the function mask delivers what was held back.
      this.routeDirty.fill(1);
      this.updateIntx();
      this.deliverPending();
    }
  }

  /** Places BAR 0 (at attach; the guest may move it later). Enables memory decoding. */
  placeBar(address: number): void {
    this.config.set32(0x10 + BAR_INDEX * 4, address);
    this.config.set16(PCI_COMMAND, this.config.u16(PCI_COMMAND) | PCI_COMMAND_MEMORY);
    this.updateMapping();
  }

  get barAddress(): number {
    return this.mappedAt;
  }

  /** Maps BAR 0 where the guest put it, when memory decoding is on; moves the ioeventfds with it. */
  private updateMapping(): void {
    const addr = this.config.barAddress(BAR_INDEX);
    const decoding = (this.config.u16(PCI_COMMAND) & PCI_COMMAND_MEMORY) !== 0;
    const want = decoding && addr !== 0 && addr + BAR_LAYOUT.size <= 2 ** 32 ? addr : -1;
    if (want === this.mappedAt) return;
    if (this.mappedAt >= 0) {
      this.host.mmio.unregister(this.mappedAt);
      this.setIoeventfds(this.mappedAt, false);
      this.mappedAt = -1;
    }
    if (want < 0) return;
    try {
      this.host.mmio.register(want, BAR_LAYOUT.size, `${this.name}-bar0`, this.barDevice);
    } catch (err) {
      log.warn(`${this.name}: guest put BAR0 at 0x${want.toString(16)}, which overlaps another device; left unmapped (${(err as Error).message})`);
      return;
    }
    this.mappedAt = want;
    this.setIoeventfds(want, true);
  }

  // ---------------------------------------------------------------- KVM plumbing

  private createKvmPlumbing(): void {
    for (let v = 0; v < this.numVectors; v++) {
      const gsi = this.host.router.allocateMsiGsi();
      const fd = native.eventfdCreate(0, { nonblock: true });
      native.kvmIrqfd(this.host.vmFd, { gsi, fd });
      this.vectorGsi.push(gsi);
      this.vectorIrqFd.push(fd);
    }
    this.model.queues.forEach((_, q) => {
      const fd = native.eventfdCreate(0, { nonblock: true });
      this.kickFds.push(fd);
      this.kickWatches.push(native.fdWatch(fd, 'r', () => this.onKick(q)));
    });
  }

  private setIoeventfds(barAddress: number, assign: boolean): void {
    this.kickFds.forEach((fd, q) => {
      try {
        native.kvmIoeventfd(this.host.vmFd, { addr: barAddress + BAR_LAYOUT.notify + q * NOTIFY_OFF_MULTIPLIER, len: this.ioeventfdLen, fd, pio: false, deassign: !assign });
      } catch (err) {
        // Without the ioeventfd the notify still arrives as an MMIO exit (barWrite): slower, not broken.
        log.warn(`${this.name}: ${assign ? 'assigning' : 'deassigning'} the ioeventfd of queue ${q}: ${(err as Error).message}`);
      }
    });
  }

  /** The eventfd a notification of queue `q` lands on (tests poke it as a guest write would). */
  kickFd(q: number): number {
    return this.kickFds[q];
  }

  private onKick(q: number): void {
    while (native.eventfdRead(this.kickFds[q]) !== null) { /* drain the counter */ }
    this.stats.kicks++;
    this.guarded(() => this.notifyQueue(q));
  }

  private notifyQueue(q: number): void {
    if (this.stopped || !(this.status & STATUS_DRIVER_OK)) return;
    this.model.queueNotify(q);
  }

  /** Runs device work; a guest violation stops the device, anything else is logged. Never throws. */
  guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof VirtioViolation || err instanceof GuestMemoryError) {
        this.deviceError(err.message);
      } else {
        log.error(`${this.name}: unexpected error in the device (stopping it): ${(err as Error).stack ?? err}`);
        this.deviceError(`internal error: ${(err as Error).message}`);
      }
    }
  }

  /** The guest broke the rules: DEVICE_NEEDS_RESET, a config interrupt, and no more processing. */
  deviceError(why: string): void {
    this.stats.violations++;
    this.stats.lastViolation = why;
    if (this.stopped) return;
    // A hostile guest can trigger this in a loop: say it a few times, then only count.
    if (this.stats.violations <= 5) log.warn(`${this.name}: device needs reset: ${why}${this.stats.violations === 5 ? ' (further ones are counted, not logged)' : ''}`);
    this.stopped = true;
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    try { this.model.quiesce(); } catch (err) { log.error(`${this.name}: quiesce failed: ${(err as Error).message}`); }
    for (const q of this.model.queues) q.deactivate();
    this.signalConfigChange();
  }

  // ---------------------------------------------------------------- interrupts

  /** Interrupts the driver for queue `q` (MSI-X vector or INTx). */
  signalQueue(q: Virtqueue): void {
    q.interrupts++;
    if (this.msixEnabled) this.signalVector(q.msixVector);
    else this.raiseIsr(ISR_QUEUE);
  }

  /** Device config changed (link, NEEDS_RESET). */
  signalConfigChange(): void {
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    if (!(this.status & STATUS_DRIVER_OK) && !(this.status & STATUS_DEVICE_NEEDS_RESET)) return;
    if (this.msixEnabled) this.signalVector(this.configVector);
    else this.raiseIsr(ISR_CONFIG);
  }

  private raiseIsr(bit: number): void {
    this.isr |= bit;
    this.updateIntx();
  }

  private updateIntx(): void {
    const level = this.isr !== 0 && !this.msixEnabled && (this.config.u16(PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE) === 0;
    if (level === this.intxLevel) return;
    this.intxLevel = level;
    if (level) this.stats.intxAssertions++;
    this.host.intx.set(level);
  }

  private vectorMasked(v: number): boolean {
    return (this.msixControl & MSIX_CONTROL_FUNCTION_MASK) !== 0 ||
      (this.msixView.getUint32(v * MSIX_ENTRY.size + MSIX_ENTRY.vectorControl, true) & MSIX_VECTOR_MASKED) !== 0;
  }

  private signalVector(v: number): void {
    if (v >= this.numVectors) return; // includes VIRTIO_MSI_NO_VECTOR
    if (this.vectorMasked(v)) {
      this.msixPba[v >>> 3] |= 1 << (v & 7);
      return;
    }
    if (this.routeDirty[v]) this.updateRoute(v);
    this.stats.vectorSignals[v]++;
    native.eventfdWrite(this.vectorIrqFd[v], 1);
  }

  private updateRoute(v: number): void {
    this.routeDirty[v] = 0;
    const e = v * MSIX_ENTRY.size;
    const addressLo = this.msixView.getUint32(e + MSIX_ENTRY.addressLo, true);
    const addressHi = this.msixView.getUint32(e + MSIX_ENTRY.addressHi, true);
    const data = this.msixView.getUint32(e + MSIX_ENTRY.data, true);
    // A message outside the LAPIC window is no interrupt: drop the route rather than write RAM.
    const valid = (addressLo & MSI_ADDRESS_MASK) >>> 0 === MSI_ADDRESS_BASE && addressHi === 0;
    this.host.router.setMsiRoute(this.vectorGsi[v], valid ? { addressLo, addressHi, data } : null);
  }

  private deliverPending(): void {
    if (!this.msixEnabled) return;
    for (let v = 0; v < this.numVectors; v++) {
      if (this.msixPba[v >>> 3] & (1 << (v & 7)) && !this.vectorMasked(v)) {
        this.msixPba[v >>> 3] &= ~(1 << (v & 7));
        this.signalVector(v);
      }
    }
  }

  private resetMsix(): void {
    this.msixTable.fill(0);
    for (let v = 0; v < this.numVectors; v++) this.msixView.setUint32(v * MSIX_ENTRY.size + MSIX_ENTRY.vectorControl, MSIX_VECTOR_MASKED, true);
    this.msixPba.fill(0);
    this.routeDirty.fill(1);
  }

  // ---------------------------------------------------------------- BAR 0

  private barRead(offset: number, size: number): number {
    const region = offset & ~(REGION_SIZE - 1);
    const at = offset - region;
    switch (region) {
      case BAR_LAYOUT.common: return this.commonRead(at, size);
      case BAR_LAYOUT.isr: {
        if (at !== 0) return 0;
        // Reading ISR acknowledges it (and lowers INTx).
        const v = this.isr;
        this.isr = 0;
        this.updateIntx();
        return v;
      }
      case BAR_LAYOUT.device:
        if (at + size > this.model.configSize) return 0;
        return this.model.configRead(at, size);
      case BAR_LAYOUT.msixTable:
        if (at + size > this.msixTable.length || size !== 4 || at % 4) return 0;
        return this.msixView.getUint32(at, true);
      case BAR_LAYOUT.msixPba:
        if (at + size > this.msixPba.length) return 0;
        return readLe(this.msixPba, at, size);
      default: return 0;
    }
  }

  private barWrite(offset: number, size: number, value: number): void {
    const region = offset & ~(REGION_SIZE - 1);
    const at = offset - region;
    switch (region) {
      case BAR_LAYOUT.common: this.commonWrite(at, size, value); break;
      case BAR_LAYOUT.device:
        if (at + size <= this.model.configSize) this.guarded(() => this.model.configWrite(at, size, value));
        break;
      case BAR_LAYOUT.notify: {
        // Reached only when the ioeventfd is not (yet) in place.
        const q = at / NOTIFY_OFF_MULTIPLIER;
        if (Number.isInteger(q) && q < this.model.queues.length) {
          this.stats.mmioNotifies++;
          this.guarded(() => this.notifyQueue(q));
        }
        break;
      }
      case BAR_LAYOUT.msixTable: {
        if (at + size > this.msixTable.length || size !== 4 || at % 4) break;
        const v = Math.floor(at / MSIX_ENTRY.size);
        this.msixView.setUint32(at, value >>> 0, true);
        this.routeDirty[v] = 1;
        if (at % MSIX_ENTRY.size === MSIX_ENTRY.vectorControl) this.deliverPending();
        break;
      }
      default: break; // ISR and PBA are read-only
    }
  }

  // ---------------------------------------------------------------- common config

  private selectedQueue(): Virtqueue | undefined {
    return this.model.queues[this.queueSelect];
  }

  private buildCommonRegisters(): Register[] {
    const C = COMMON_CFG;
    const q = () => this.selectedQueue();
    /** Queue set-up fields may change only while the queue is off. */
    const setupWrite = (fn: (queue: Virtqueue, v: number) => void) => (v: number) => {
      const queue = q();
      if (queue && !queue.enabled) fn(queue, v);
    };
    const features = () => this.model.deviceFeatures();
    return [
      { offset: C.device_feature_select, size: 4, name: 'device_feature_select', read: () => this.deviceFeatureSelect, write: (v) => { this.deviceFeatureSelect = v >>> 0; } },
      {
        offset: C.device_feature, size: 4, name: 'device_feature',
        read: () => (this.deviceFeatureSelect === 0 ? features().lo : this.deviceFeatureSelect === 1 ? features().hi : 0),
      },
      { offset: C.driver_feature_select, size: 4, name: 'driver_feature_select', read: () => this.driverFeatureSelect, write: (v) => { this.driverFeatureSelect = v >>> 0; } },
      {
        offset: C.driver_feature, size: 4, name: 'driver_feature',
        read: () => (this.driverFeatureSelect === 0 ? this.driverFeatures.lo : this.driverFeatureSelect === 1 ? this.driverFeatures.hi : 0),
        write: (v) => {
          if (this.status & STATUS_FEATURES_OK) return; // fixed once accepted
          if (this.driverFeatureSelect === 0) this.driverFeatures.lo = v >>> 0;
          else if (this.driverFeatureSelect === 1) this.driverFeatures.hi = v >>> 0;
        },
      },
      { offset: C.config_msix_vector, size: 2, name: 'config_msix_vector', read: () => this.configVector, write: (v) => { this.configVector = this.acceptVector(v); } },
      { offset: C.num_queues, size: 2, name: 'num_queues', read: () => this.model.queues.length },
      { offset: C.device_status, size: 1, name: 'device_status', read: () => this.status, write: (v) => this.writeStatus(v) },
      { offset: C.config_generation, size: 1, name: 'config_generation', read: () => this.configGeneration },
      { offset: C.queue_select, size: 2, name: 'queue_select', read: () => this.queueSelect, write: (v) => { this.queueSelect = v; } },
      {
        offset: C.queue_size, size: 2, name: 'queue_size', read: () => q()?.size ?? 0,
        // Checked (power of two, <= max) when the queue is enabled.
        write: setupWrite((queue, v) => { queue.size = v; }),
      },
      {
        offset: C.queue_msix_vector, size: 2, name: 'queue_msix_vector', read: () => q()?.msixVector ?? VIRTIO_MSI_NO_VECTOR,
        write: (v) => { const queue = q(); if (queue) queue.msixVector = this.acceptVector(v); },
      },
      { offset: C.queue_enable, size: 2, name: 'queue_enable', read: () => (q()?.enabled ? 1 : 0), write: (v) => this.writeQueueEnable(v) },
      { offset: C.queue_notify_off, size: 2, name: 'queue_notify_off', read: () => (q() ? this.queueSelect : 0) },
      ...addressRegisters(C.queue_desc_lo, 'queue_desc', q, setupWrite, (queue) => queue.descAddr, (queue, a) => { queue.descAddr = a; }),
      ...addressRegisters(C.queue_driver_lo, 'queue_driver', q, setupWrite, (queue) => queue.availAddr, (queue, a) => { queue.availAddr = a; }),
      ...addressRegisters(C.queue_device_lo, 'queue_device', q, setupWrite, (queue) => queue.usedAddr, (queue, a) => { queue.usedAddr = a; }),
    ];
  }

  /** A vector the device has, else NO_VECTOR (the driver reads it back to see the refusal). */
  private acceptVector(v: number): number {
    return v < this.numVectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  private commonRead(at: number, size: number): number {
    for (const r of this.commonRegisters) if (r.offset === at && r.size === size) return r.read();
    return 0;
  }

  private commonWrite(at: number, size: number, value: number): void {
    for (const r of this.commonRegisters) {
      if (r.offset === at && r.size === size) {
        if (r.write) this.guarded(() => r.write!(value));
        return;
      }
    }
  }

  private writeQueueEnable(v: number): void {
    const queue = this.selectedQueue();
    if (!queue || v !== 1 || queue.enabled) return; // the driver may not disable a queue (reset does)
    queue.enabled = true;
    if (!this.stopped) queue.activate(this.host.dma, hasFeature(this.driverFeatures, VIRTIO_RING_F_EVENT_IDX), hasFeature(this.driverFeatures, VIRTIO_F_INDIRECT_DESC));
  }

  private writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.reset();
      return;
    }
    const before = this.status;
    let next = (value & ~STATUS_DEVICE_NEEDS_RESET) | (before & STATUS_DEVICE_NEEDS_RESET);
    if (next & STATUS_FEATURES_OK && !(before & STATUS_FEATURES_OK)) {
      const why = this.featureRefusal();
      if (why) {
        log.info(`${this.name}: refusing the driver's features: ${why}`);
        next &= ~STATUS_FEATURES_OK;
      }
    }
    if (next & STATUS_DRIVER_OK && !(next & STATUS_FEATURES_OK)) next &= ~STATUS_DRIVER_OK;
    this.status = next;
    if (next & STATUS_DRIVER_OK && !(before & STATUS_DRIVER_OK) && !this.stopped) this.model.activate(this.driverFeatures);
  }

  private featureRefusal(): string | undefined {
    const dev = this.model.deviceFeatures();
    const drv = this.driverFeatures;
    if ((drv.lo & ~dev.lo) !== 0 || (drv.hi & ~dev.hi) !== 0) return 'it accepted features the device does not offer';
    if (!hasFeature(drv, VIRTIO_F_VERSION_1)) return 'VIRTIO_F_VERSION_1 not accepted (this is a modern-only device)';
    return this.model.checkFeatures(drv);
  }

  /** Driver reset (status 0): power-on state, except where the BAR and MSI-X capability are. */
  reset(): void {
    this.model.quiesce();
    for (const q of this.model.queues) q.reset();
    this.deviceFeatureSelect = this.driverFeatureSelect = this.queueSelect = 0;
    this.driverFeatures = { lo: 0, hi: 0 };
    this.status = 0;
    this.configVector = VIRTIO_MSI_NO_VECTOR;
    this.isr = 0;
    this.stopped = false;
    this.updateIntx();
  }

  // ---------------------------------------------------------------- migration

  save(): VirtioPciState {
    return {
      config: Buffer.from(this.config.bytes).toString('hex'),
      deviceFeatureSelect: this.deviceFeatureSelect, driverFeatureSelect: this.driverFeatureSelect,
      driverFeatures: { ...this.driverFeatures }, status: this.status, configGeneration: this.configGeneration,
      configVector: this.configVector, queueSelect: this.queueSelect,
      msixTable: Buffer.from(this.msixTable).toString('hex'), msixPba: Buffer.from(this.msixPba).toString('hex'),
      isr: this.isr, stopped: this.stopped, queues: this.model.queues.map((q) => q.save()),
    };
  }

  /**
   * Restores transport state and re-wires KVM: BAR mapping and ioeventfds at the saved
   * address, MSI routes from the saved table (irqfds exist since construction), INTx level,
   * queues bound to RAM. The model is activated by its owner afterwards.
   */
  restore(s: VirtioPciState): void {
    const config = Buffer.from(s.config, 'hex');
    const table = Buffer.from(s.msixTable, 'hex');
    const pba = Buffer.from(s.msixPba, 'hex');
    if (config.length !== 256 || table.length !== this.msixTable.length || pba.length !== this.msixPba.length || s.queues.length !== this.model.queues.length) {
      throw new Error(`${this.name}: saved transport state does not match this device's shape (queues ${s.queues.length} vs ${this.model.queues.length})`);
    }
    this.config.bytes.set(config);
    this.msixTable.set(table);
    this.msixPba.set(pba);
    this.routeDirty.fill(1);
    this.deviceFeatureSelect = s.deviceFeatureSelect;
    this.driverFeatureSelect = s.driverFeatureSelect;
    this.driverFeatures = { ...s.driverFeatures };
    this.status = s.status;
    this.configGeneration = s.configGeneration;
    this.configVector = s.configVector;
    this.queueSelect = s.queueSelect;
    this.isr = s.isr;
    this.stopped = s.stopped;
    this.model.queues.forEach((q, i) => {
      q.restore(s.queues[i]);
      if (q.enabled && !this.stopped) q.activate(this.host.dma, hasFeature(this.driverFeatures, VIRTIO_RING_F_EVENT_IDX), hasFeature(this.driverFeatures, VIRTIO_F_INDIRECT_DESC));
    });
    this.updateMapping();
    this.intxLevel = false;
    this.host.intx.set(false);
    this.updateIntx();
  }

  /** Stops watches, removes ioeventfds/irqfds and the BAR; closes the eventfds. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const w of this.kickWatches) w.stop();
    if (this.mappedAt >= 0) {
      this.host.mmio.unregister(this.mappedAt);
      this.setIoeventfds(this.mappedAt, false);
      this.mappedAt = -1;
    }
    this.vectorIrqFd.forEach((fd, v) => {
      try { native.kvmIrqfd(this.host.vmFd, { gsi: this.vectorGsi[v], fd, deassign: true }); } catch { /* VM already gone */ }
      try { this.host.router.release(this.vectorGsi[v]); } catch { /* VM already gone */ }
      native.close(fd);
    });
    for (const fd of this.kickFds) native.close(fd);
    if (this.intxLevel) this.host.intx.set(false);
  }
}

function addressRegisters(
  lo: number, name: string, q: () => Virtqueue | undefined,
  setupWrite: (fn: (queue: Virtqueue, v: number) => void) => (v: number) => void,
  get: (queue: Virtqueue) => number, set: (queue: Virtqueue, a: number) => void,
): Register[] {
  return [
    { offset: lo, size: 4, name: `${name}_lo`, read: () => { const x = q(); return x ? get(x) % 0x1_0000_0000 : 0; },
      write: setupWrite((queue, v) => set(queue, Math.floor(get(queue) / 0x1_0000_0000) * 0x1_0000_0000 + (v >>> 0))) },
    // Addresses above 2^53 cannot be RAM; they are kept (clamped) and refused when the queue is enabled.
    { offset: lo + 4, size: 4, name: `${name}_hi`, read: () => { const x = q(); return x ? Math.floor(get(x) / 0x1_0000_0000) >>> 0 : 0; },
      write: setupWrite((queue, v) => set(queue, Math.min((v >>> 0), 0x1fffff) * 0x1_0000_0000 + (get(queue) % 0x1_0000_0000))) },
  ];
}

function readLe(bytes: Uint8Array, at: number, size: number): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + bytes[at + i];
  return v;
}

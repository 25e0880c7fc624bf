/**
 * Plugging a virtio-net NIC into a Vm through its public members only: a PCI slot, a BAR
 * in the PCI MMIO window, the VM's GSI router, an INTx line, its migration section, and
 * its run state (the NIC moves data only while the VM runs).
 */
import { BatonError } from '../../../util/errors';
import { PCI_MMIO_BASE, PCI_MMIO_SIZE } from '../../layout';
import type { Vm } from '../../vm';
import type { TapBackend } from '../../net/tap-backend';
import { BAR_LAYOUT } from './virtio-pci';
import { VirtioNetDevice } from './virtio-net';
import { DmaSpace } from './virtqueue';

/** IOAPIC pins 16-23 are PCI's (level, active low in the MP table): INTx of slot s goes to 16 + (s - 1) % 8. */
const PCI_INTX_FIRST_GSI = 16;
const PCI_INTX_GSIS = 8;
const PCI_SLOTS = 32;

export interface AttachVirtioNetOptions {
  /** QEMU's device id; migration section `dev/net/<id>`. */
  id: string;
  backend: TapBackend;
  mac?: string;
  mq?: boolean;
  queueSize?: number;
  /** PCI slot (default: the first free one). */
  slot?: number;
  /** BAR 0 address (default: next free in the PCI MMIO window). The guest may move it. */
  barAddress?: number;
  /** INTx GSI (default from the slot). */
  intxGsi?: number;
}

/** For the MP table (boot/mptable.ts PciIrqRoute): where this NIC's INTA# goes. */
export interface PciIntxRoute { slot: number; pin: number; gsi: number }

export interface AttachedVirtioNet {
  device: VirtioNetDevice;
  slot: number;
  intxRoute: PciIntxRoute;
  /** Undoes what attach did on the VM except the PCI slot (the caller frees it). */
  detach(): void;
}

const nextBar = new WeakMap<object, number>();

/** A naturally aligned range of the PCI MMIO window for a BAR (per VM; nothing is ever freed). */
export function allocatePciMmio(vm: object, size: number): number {
  const next = nextBar.get(vm) ?? PCI_MMIO_BASE;
  const addr = Math.ceil(next / size) * size;
  if (addr + size > PCI_MMIO_BASE + PCI_MMIO_SIZE) throw new BatonError('ENOSPC', `PCI MMIO window is full (${size} bytes wanted)`);
  nextBar.set(vm, addr + size);
  return addr;
}

function freeSlot(vm: Vm): number {
  const used = new Set(vm.pci.devices().map((d) => d.slot));
  for (let s = 1; s < PCI_SLOTS; s++) if (!used.has(s)) return s;
  throw new BatonError('ENOSPC', 'no free PCI slot');
}

export function attachVirtioNet(vm: Vm, opts: AttachVirtioNetOptions): AttachedVirtioNet {
  if (vm.extraDeviceState.some((d) => d.section === `dev/net/${opts.id}`)) {
    throw new BatonError('EEXIST', `a NIC with id "${opts.id}" is already attached`);
  }
  const slot = opts.slot ?? freeSlot(vm);
  const intxGsi = opts.intxGsi ?? PCI_INTX_FIRST_GSI + ((slot - 1) % PCI_INTX_GSIS);
  const router = vm.gsiRouter;
  // KVM_SET_GSI_ROUTING replaces the table: install the full one (legacy routes included) once.
  if (router.commits === 0) router.commit();
  const dma = new DmaSpace(vm.memory, vm.wholeRam());
  const device = new VirtioNetDevice(`virtio-net ${opts.id}`, {
    id: opts.id, backend: opts.backend, mac: opts.mac, mq: opts.mq, queueSize: opts.queueSize,
  }, dma, { vmFd: vm.vmFd, mmio: vm.mmio, router, intx: vm.irqLine(intxGsi), intxGsi });
  try {
    vm.pci.add(device.transport, slot);
    device.transport.placeBar(opts.barAddress ?? allocatePciMmio(vm, BAR_LAYOUT.size));
  } catch (err) {
    device.detach();
    throw err;
  }
  vm.extraDeviceState.push(device);
  const onRunning = (running: boolean): void => device.setRunning(running);
  vm.on('running', onRunning);
  device.setRunning(vm.status === 'running');
  return {
    device, slot, intxRoute: { slot, pin: 0, gsi: intxGsi },
    detach: () => {
      vm.off('running', onRunning);
      const i = vm.extraDeviceState.indexOf(device);
      if (i >= 0) vm.extraDeviceState.splice(i, 1);
      device.detach();
    },
  };
}

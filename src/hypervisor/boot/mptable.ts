/**
 * Intel MultiProcessor Specification 1.4 tables: how a stock Linux (booted without ACPI)
 * finds its CPUs, the IOAPIC and the interrupt routing of ISA and PCI devices. Written
 * into the EBDA, where Linux scans for the "_MP_" floating pointer.
 */
import { Struct, f } from '../../util/struct';
import { GuestMemory } from '../guest-memory';
import { IOAPIC_ADDR, LAPIC_ADDR } from '../layout';

const MPF = new Struct('mpf_intel', 16, {
  signature: f(0, 'u32'), physptr: f(4, 'u32'), length: f(8, 'u8'), specification: f(9, 'u8'),
  checksum: f(10, 'u8'), feature1: f(11, 'u8'), feature2: f(12, 'u8'),
});
const MPC_TABLE = new Struct('mpc_table', 44, {
  signature: f(0, 'u32'), length: f(4, 'u16'), spec: f(6, 'u8'), checksum: f(7, 'u8'),
  oemcount: f(34, 'u16'), lapic: f(36, 'u32'),
});
const MPC_CPU = new Struct('mpc_cpu', 20, {
  type: f(0, 'u8'), apicid: f(1, 'u8'), apicver: f(2, 'u8'), cpuflag: f(3, 'u8'),
  cpufeature: f(4, 'u32'), featureflag: f(8, 'u32'),
});
const MPC_BUS = new Struct('mpc_bus', 8, { type: f(0, 'u8'), busid: f(1, 'u8') });
const MPC_IOAPIC = new Struct('mpc_ioapic', 8, {
  type: f(0, 'u8'), apicid: f(1, 'u8'), apicver: f(2, 'u8'), flags: f(3, 'u8'), apicaddr: f(4, 'u32'),
});
const MPC_INTSRC = new Struct('mpc_intsrc', 8, {
  type: f(0, 'u8'), irqtype: f(1, 'u8'), irqflag: f(2, 'u16'), srcbus: f(4, 'u8'),
  srcbusirq: f(5, 'u8'), dstapic: f(6, 'u8'), dstirq: f(7, 'u8'),
});

const MP_PROCESSOR = 0, MP_BUS = 1, MP_IOAPIC = 2, MP_INTSRC = 3, MP_LINTSRC = 4;
const MP_IRQ_INT = 0, MP_IRQ_NMI = 1, MP_IRQ_EXTINT = 3;
const CPU_ENABLED = 1, CPU_BOOTPROCESSOR = 2;
/** PCI INTx: active low, level triggered. */
const IRQFLAG_PCI = 0x3 | (0x3 << 2);
const ISA_BUS_ID = 0;
const PCI_BUS_ID = 1;
const APIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
export const IOAPIC_PINS = 24;
/** ISA IRQs routed 1:1 to IOAPIC pins 0-15 (IRQ0 to pin 2 as on PCs, where the PIT lands). */
const ISA_IRQS = 16;

export interface PciIrqRoute {
  slot: number;
  /** 0 = INTA ... 3 = INTD */
  pin: number;
  gsi: number;
}

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** Size the tables take for a given shape (to check it fits before writing). */
export function mptableSize(cpus: number, pciRoutes: number): number {
  return MPF.size + MPC_TABLE.size + cpus * MPC_CPU.size + 2 * MPC_BUS.size + MPC_IOAPIC.size +
    (ISA_IRQS + pciRoutes + 2) * MPC_INTSRC.size;
}

export function writeMptable(mem: GuestMemory, addr: number, cpus: number, pciRoutes: PciIrqRoute[], cpuSignature = 0x600, featureFlags = 0x201): void {
  const size = mptableSize(cpus, pciRoutes.length);
  const region = mem.slice(addr, size);
  region.fill(0);
  const v = mem.view(addr, size);
  const ioapicId = cpus;
  const tableAt = MPF.size;
  let p = tableAt + MPC_TABLE.size;
  let count = 0;
  for (let id = 0; id < cpus; id++) {
    MPC_CPU.assign(v, p, { type: MP_PROCESSOR, apicid: id, apicver: APIC_VERSION,
      cpuflag: CPU_ENABLED | (id === 0 ? CPU_BOOTPROCESSOR : 0), cpufeature: cpuSignature, featureflag: featureFlags });
    p += MPC_CPU.size; count++;
  }
  for (const [busid, name] of [[ISA_BUS_ID, 'ISA   '], [PCI_BUS_ID, 'PCI   ']] as const) {
    MPC_BUS.assign(v, p, { type: MP_BUS, busid });
    region.set(Buffer.from(name, 'latin1'), p + 2);
    p += MPC_BUS.size; count++;
  }
  MPC_IOAPIC.assign(v, p, { type: MP_IOAPIC, apicid: ioapicId, apicver: IOAPIC_VERSION, flags: 1, apicaddr: IOAPIC_ADDR });
  p += MPC_IOAPIC.size; count++;
  for (let irq = 0; irq < ISA_IRQS; irq++) {
    MPC_INTSRC.assign(v, p, { type: MP_INTSRC, irqtype: MP_IRQ_INT, irqflag: 0, srcbus: ISA_BUS_ID,
      srcbusirq: irq, dstapic: ioapicId, dstirq: irq === 0 ? 2 : irq });
    p += MPC_INTSRC.size; count++;
  }
  for (const r of pciRoutes) {
    MPC_INTSRC.assign(v, p, { type: MP_INTSRC, irqtype: MP_IRQ_INT, irqflag: IRQFLAG_PCI, srcbus: PCI_BUS_ID,
      srcbusirq: (r.slot << 2) | r.pin, dstapic: ioapicId, dstirq: r.gsi });
    p += MPC_INTSRC.size; count++;
  }
  // LINT0 takes the 8259's ExtINT, LINT1 the NMI, on every local APIC (0xff).
  MPC_INTSRC.assign(v, p, { type: MP_LINTSRC, irqtype: MP_IRQ_EXTINT, srcbus: ISA_BUS_ID, dstapic: 0xff, dstirq: 0 });
  p += MPC_INTSRC.size; count++;
  MPC_INTSRC.assign(v, p, { type: MP_LINTSRC, irqtype: MP_IRQ_NMI, srcbus: ISA_BUS_ID, dstapic: 0xff, dstirq: 1 });
  p += MPC_INTSRC.size; count++;

  region.set(Buffer.from('PCMP', 'latin1'), tableAt);
  region.set(Buffer.from('BATON   ', 'latin1'), tableAt + 8);
  region.set(Buffer.from('BATON-HV    ', 'latin1'), tableAt + 16);
  MPC_TABLE.assign(v, tableAt, { length: p - tableAt, spec: 4, oemcount: count, lapic: LAPIC_ADDR });
  MPC_TABLE.set(v, tableAt, 'checksum', checksum(region.subarray(tableAt, p)));

  region.set(Buffer.from('_MP_', 'latin1'), 0);
  MPF.assign(v, 0, { physptr: addr + tableAt, length: 1, specification: 4, feature1: 0, feature2: 0 });
  MPF.set(v, 0, 'checksum', checksum(region.subarray(0, MPF.size)));
}

/**
 * The VM's one KVM GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so
 * whoever adds an MSI route must send the legacy routes too, or the PIT, serial and
 * keyboard interrupts silently stop. This keeps the full table in one place: KVM's
 * default irqchip routes (what KVM installs with KVM_CREATE_IRQCHIP, arch/x86/kvm/irq_comm.c:
 * GSI 0-15 to both the 8259 pair and IOAPIC pin n, GSI 16-23 to IOAPIC pin n only) plus the
 * MSI routes devices allocate above them.
 *
 * One router per VM: `Vm.gsiRouter`.
 */
import { native } from '../../../native';
import type { GsiRoute } from '../../../native/kvm';
import { BatonError } from '../../../util/errors';

const KVM_IRQCHIP_PIC_MASTER = 0;
const KVM_IRQCHIP_PIC_SLAVE = 1;
const KVM_IRQCHIP_IOAPIC = 2;
const IOAPIC_PINS = 24;
const PIC_PINS = 16;
/** KVM_MAX_IRQ_ROUTES on x86. */
const MAX_ROUTES = 4096;

export interface MsiMessage { addressLo: number; addressHi: number; data: number }

/** KVM's default table, as KVM_CREATE_IRQCHIP installs it. */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
    if (gsi < PIC_PINS) {
      routes.push({ gsi, type: 'irqchip', irqchip: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: gsi % 8 });
    }
    routes.push({ gsi, type: 'irqchip', irqchip: KVM_IRQCHIP_IOAPIC, pin: gsi });
  }
  return routes;
}

export class GsiRouter {
  private readonly msiRoutes = new Map<number, MsiMessage | null>();
  private nextGsi = IOAPIC_PINS;
  /** KVM_SET_GSI_ROUTING calls made (for tests and stats). */
  commits = 0;

  constructor(private readonly vmFd: number) {}

  /** A GSI for an MSI message, with no route yet (an irqfd on it injects nothing until one is set). */
  allocateMsiGsi(): number {
    if (this.nextGsi >= MAX_ROUTES) throw new BatonError('EGSI', `no free GSI for an MSI route (KVM allows ${MAX_ROUTES})`);
    const gsi = this.nextGsi++;
    this.msiRoutes.set(gsi, null);
    return gsi;
  }

  /** Points `gsi` at an MSI message (null removes the route). Commits only when it changed. */
  setMsiRoute(gsi: number, msg: MsiMessage | null): void {
    const old = this.msiRoutes.get(gsi);
    if (old === undefined) throw new Error(`GSI ${gsi} was not allocated by this router`);
    if (old === msg || (old && msg && old.addressLo === msg.addressLo && old.addressHi === msg.addressHi && old.data === msg.data)) return;
    this.msiRoutes.set(gsi, msg ? { ...msg } : null);
    this.commit();
  }

  release(gsi: number): void {
    if (this.msiRoutes.get(gsi)) {
      this.msiRoutes.delete(gsi);
      this.commit();
    } else {
      this.msiRoutes.delete(gsi);
    }
  }

  /** The full table as KVM gets it. */
  table(): GsiRoute[] {
    const routes = defaultIrqchipRoutes();
    for (const [gsi, m] of this.msiRoutes) if (m) routes.push({ gsi, type: 'msi', ...m });
    return routes;
  }

  commit(): void {
    native.kvmSetGsiRouting(this.vmFd, this.table());
    this.commits++;
  }
}

/**
 * Port-I/O and MMIO dispatch: devices claim address ranges; a vCPU exit is routed to the
 * device owning the address. Unclaimed reads return all ones and unclaimed writes are
 * dropped, as on a PC bus; both are counted so surprises are visible in logs.
 */
export interface BusDevice {
  /** `offset` is relative to the start of the claimed range. */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

interface Claim {
  start: number;
  end: number;
  device: BusDevice;
  name: string;
}

export class IoBus {
  private claims: Claim[] = [];
  unclaimedAccesses = 0;

  constructor(readonly kind: 'pio' | 'mmio') {}

  register(start: number, length: number, name: string, device: BusDevice): void {
    const end = start + length;
    const clash = this.claims.find((c) => start < c.end && c.start < end);
    if (clash) throw new Error(`${this.kind} range 0x${start.toString(16)}+${length} for ${name} overlaps ${clash.name}`);
    this.claims.push({ start, end, device, name });
    this.claims.sort((a, b) => a.start - b.start);
  }

  unregister(start: number): void {
    this.claims = this.claims.filter((c) => c.start !== start);
  }

  private find(addr: number): Claim | undefined {
    // Few claims (a dozen ports, a few BARs): a linear scan beats a tree here.
    for (const c of this.claims) if (addr >= c.start && addr < c.end) return c;
    return undefined;
  }

  read(addr: number, size: number): number {
    const c = this.find(addr);
    if (!c) {
      this.unclaimedAccesses++;
      return size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    }
    return c.device.read(addr - c.start, size);
  }

  write(addr: number, size: number, value: number): void {
    const c = this.find(addr);
    if (!c) {
      this.unclaimedAccesses++;
      return;
    }
    c.device.write(addr - c.start, size, value);
  }
}

/** Interrupt lines as devices see them: no KVM, no irqchip details. */
export interface IrqLine {
  /** Edge: one interrupt now. */
  pulse(): void;
  /** Level: assert or deassert. */
  set(level: boolean): void;
}

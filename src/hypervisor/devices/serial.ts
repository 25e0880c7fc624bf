/**
 * 8250/16550A UART (ttyS0 at 0x3f8, IRQ 4), enough for Linux's 8250 driver and for
 * polled output: transmit is instantaneous (THR always empty), receive holds a FIFO fed
 * by the console. Interrupts are recomputed from the registers after every access.
 */
import { BusDevice, IrqLine } from './io-bus';

const IER_RDI = 0x01; // receive data available
const IER_THRI = 0x02; // transmit holding register empty
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO_BITS = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MSR_DEFAULT = 0xb0; // DCD, DSR, CTS asserted: a cable is connected
const RX_FIFO_MAX = 64 * 1024;

export interface SerialState {
  ier: number; lcr: number; mcr: number; scr: number; dll: number; dlm: number; fcr: number;
  thriPending: boolean; rx: number[];
}

export class Serial8250 implements BusDevice {
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0x08;
  private scr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private fcr = 0;
  /** THRE interrupt is pending until IIR is read or THR written (8250 semantics). */
  private thriPending = false;
  private rx: number[] = [];
  private lastIrqLevel = false;

  constructor(
    private readonly irq: IrqLine,
    private readonly output: (bytes: Buffer) => void,
  ) {}

  /** Bytes typed on the console. */
  input(data: Uint8Array): void {
    const room = RX_FIFO_MAX - this.rx.length;
    for (let i = 0; i < Math.min(room, data.length); i++) this.rx.push(data[i]);
    this.updateIrq();
  }

  read(offset: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) return this.dll;
        {
          const b = this.rx.shift() ?? 0;
          this.updateIrq();
          return b;
        }
      case 1: return dlab ? this.dlm : this.ier;
      case 2: {
        const iir = this.interruptId() | (this.fcr & 1 ? IIR_FIFO_BITS : 0);
        if ((iir & 0x0f) === IIR_THRI) {
          this.thriPending = false;
          this.updateIrq();
        }
        return iir;
      }
      case 3: return this.lcr;
      case 4: return this.mcr;
      case 5: return LSR_THRE | LSR_TEMT | (this.rx.length ? LSR_DR : 0);
      case 6: return this.mcr & MCR_LOOP ? ((this.mcr & 0x0c) << 4) | ((this.mcr & 0x03) << 4) : MSR_DEFAULT;
      case 7: return this.scr;
      default: return 0xff;
    }
  }

  write(offset: number, _size: number, value: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    value &= 0xff;
    switch (offset) {
      case 0:
        if (dlab) { this.dll = value; return; }
        if (this.mcr & MCR_LOOP) this.rx.push(value);
        else this.output(Buffer.of(value));
        this.thriPending = true;
        break;
      case 1:
        if (dlab) { this.dlm = value; return; }
        // Enabling THRI while THR is empty raises it at once, as real 16550s do.
        if (!(this.ier & IER_THRI) && value & IER_THRI) this.thriPending = true;
        this.ier = value & 0x0f;
        break;
      case 2: this.fcr = value; if (value & 0x02) this.rx = []; break;
      case 3: this.lcr = value; break;
      case 4: this.mcr = value & 0x1f; break;
      case 7: this.scr = value; break;
      default: break;
    }
    this.updateIrq();
  }

  private interruptId(): number {
    if (this.ier & IER_RDI && this.rx.length) return IIR_RDI;
    if (this.ier & IER_THRI && this.thriPending) return IIR_THRI;
    return IIR_NO_INT;
  }

  private updateIrq(): void {
    const level = this.interruptId() !== IIR_NO_INT;
    // The ISA line is edge-triggered at the PIC/IOAPIC: signal each new interrupt once.
    if (level && !this.lastIrqLevel) this.irq.pulse();
    this.lastIrqLevel = level;
  }

  save(): SerialState {
    return { ier: this.ier, lcr: this.lcr, mcr: this.mcr, scr: this.scr, dll: this.dll, dlm: this.dlm,
      fcr: this.fcr, thriPending: this.thriPending, rx: [...this.rx] };
  }

  restore(s: SerialState): void {
    Object.assign(this, { ...s, rx: [...s.rx] });
    this.lastIrqLevel = false;
    this.updateIrq();
  }
}

/**
 * i8042 keyboard controller (ports 0x60 data, 0x64 status/command), the way Firecracker
 * uses it: the graceful power-off request is a Ctrl-Alt-Del typed on its keyboard (Linux's
 * keyboard driver and our test guest both honour it), and the guest resets the machine by
 * pulsing the reset line (command 0xFE). Enough of the controller for Linux's probe.
 */
import { BusDevice, IrqLine } from './io-bus';

const STATUS_OBF = 0x01;
const STATUS_SYSFLAG = 0x04;
const STATUS_CMD = 0x08; // last write was a command
const CMDBYTE_KBD_INT = 0x01;
const CMDBYTE_XLATE = 0x40;

const CMD_READ_CMDBYTE = 0x20;
const CMD_WRITE_CMDBYTE = 0x60;
const CMD_DISABLE_AUX = 0xa7;
const CMD_ENABLE_AUX = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_DISABLE_KBD = 0xad;
const CMD_ENABLE_KBD = 0xae;
const CMD_READ_OUTPORT = 0xd0;
const CMD_WRITE_OUTPORT = 0xd1;
const CMD_WRITE_AUX = 0xd4;
const CMD_PULSE_RESET = 0xfe;

const KBD_ACK = 0xfa;

/** Ctrl, Alt, Del pressed then released. Set 1 (what the guest sees with translation on) and set 2. */
const CTRL_ALT_DEL_SET1 = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2 = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];

export interface I8042State { cmdByte: number; pendingCommand: number; outport: number; queue: number[] }

export class I8042 implements BusDevice {
  private cmdByte = CMDBYTE_KBD_INT | STATUS_SYSFLAG | CMDBYTE_XLATE;
  private pendingCommand = 0;
  private outport = 0x01;
  private queue: number[] = [];
  private lastWasCommand = false;

  constructor(
    private readonly irq: IrqLine,
    private readonly onReset: () => void,
  ) {}

  /** The graceful power-off request. */
  sendCtrlAltDel(): void {
    this.queue.push(...(this.cmdByte & CMDBYTE_XLATE ? CTRL_ALT_DEL_SET1 : CTRL_ALT_DEL_SET2));
    this.signal();
  }

  read(offset: number): number {
    if (offset === 4) {
      return (this.queue.length ? STATUS_OBF : 0) | STATUS_SYSFLAG | (this.lastWasCommand ? STATUS_CMD : 0);
    }
    if (offset === 0) {
      const b = this.queue.shift() ?? 0;
      if (this.queue.length) this.signal();
      return b;
    }
    return 0xff;
  }

  write(offset: number, _size: number, value: number): void {
    value &= 0xff;
    if (offset === 4) {
      this.lastWasCommand = true;
      this.command(value);
    } else if (offset === 0) {
      this.lastWasCommand = false;
      this.data(value);
    }
  }

  private command(cmd: number): void {
    switch (cmd) {
      case CMD_READ_CMDBYTE: this.reply(this.cmdByte); break;
      case CMD_WRITE_CMDBYTE: case CMD_WRITE_OUTPORT: case CMD_WRITE_AUX: this.pendingCommand = cmd; break;
      case CMD_SELF_TEST: this.reply(0x55); break;
      case CMD_KBD_TEST: this.reply(0x00); break;
      // No mouse: the aux port test fails, so Linux leaves it alone.
      case CMD_AUX_TEST: this.reply(0xff); break;
      case CMD_READ_OUTPORT: this.reply(this.outport); break;
      case CMD_DISABLE_KBD: case CMD_ENABLE_KBD: case CMD_DISABLE_AUX: case CMD_ENABLE_AUX: break;
      case CMD_PULSE_RESET: this.onReset(); break;
      default: break;
    }
  }

  private data(value: number): void {
    const pending = this.pendingCommand;
    this.pendingCommand = 0;
    if (pending === CMD_WRITE_CMDBYTE) { this.cmdByte = value; return; }
    if (pending === CMD_WRITE_OUTPORT) {
      this.outport = value;
      if ((value & 0x01) === 0) this.onReset(); // bit 0 low holds the CPU in reset
      return;
    }
    if (pending === CMD_WRITE_AUX) return; // no mouse attached
    // Commands to the keyboard itself.
    switch (value) {
      case 0xff: this.reply(KBD_ACK, 0xaa); break; // reset: ack + self-test passed
      case 0xf2: this.reply(KBD_ACK, 0xab, 0x83); break; // identify: MF2 keyboard
      case 0xee: this.reply(0xee); break; // echo
      default: this.reply(KBD_ACK); break; // LEDs, rate, scancode set, enable...: acknowledged
    }
  }

  private reply(...bytes: number[]): void {
    this.queue.push(...bytes);
    this.signal();
  }

  private signal(): void {
    if (this.cmdByte & CMDBYTE_KBD_INT) this.irq.pulse();
  }

  save(): I8042State {
    return { cmdByte: this.cmdByte, pendingCommand: this.pendingCommand, outport: this.outport, queue: [...this.queue] };
  }

  restore(s: I8042State): void {
    this.cmdByte = s.cmdByte; this.pendingCommand = s.pendingCommand; this.outport = s.outport; this.queue = [...s.queue];
  }
}

/**
 * MC146818 CMOS RTC at 0x70/0x71: the wall-clock time Linux reads at boot (BCD, 24-hour),
 * with the update-in-progress bit clear so its read loop ends at once.
 */
import { BusDevice } from './io-bus';

const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_D = 0x0d;

const bcd = (n: number) => ((Math.floor(n / 10) << 4) | (n % 10)) & 0xff;

export class CmosRtc implements BusDevice {
  private index = 0;
  private readonly ram = new Uint8Array(128);

  read(offset: number): number {
    if (offset === 0) return 0xff;
    const now = new Date();
    switch (this.index) {
      case 0x00: return bcd(now.getUTCSeconds());
      case 0x02: return bcd(now.getUTCMinutes());
      case 0x04: return bcd(now.getUTCHours());
      case 0x06: return bcd(now.getUTCDay() + 1);
      case 0x07: return bcd(now.getUTCDate());
      case 0x08: return bcd(now.getUTCMonth() + 1);
      case 0x09: return bcd(now.getUTCFullYear() % 100);
      case 0x32: return bcd(Math.floor(now.getUTCFullYear() / 100));
      case REG_A: return 0x26; // 32.768 kHz base, 1024 Hz rate, UIP clear
      case REG_B: return 0x02; // 24-hour, BCD, no interrupts
      case REG_D: return 0x80; // battery good
      default: return this.ram[this.index];
    }
  }

  write(offset: number, _size: number, value: number): void {
    if (offset === 0) this.index = value & 0x7f; // bit 7 is the NMI mask
    else this.ram[this.index] = value & 0xff;
  }
}

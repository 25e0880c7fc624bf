/**
 * ACPI PM1a event and control registers at 0x600 (PM1a_STS/EN at 0x600/0x602, PM1a_CNT at
 * 0x604 — where QEMU's PIIX4 puts them). A guest powers off by writing SLP_EN with the S5
 * sleep type; our test guest writes it directly, a Linux guest through the FADT.
 */
import { BusDevice } from './io-bus';

export const PM1A_BASE = 0x600;
export const PM1A_LENGTH = 6;
const SLP_EN = 1 << 13;
const SLP_TYP_SHIFT = 10;
/** The S5 sleep type value our tables (and QEMU's DSDT) define. */
export const SLP_TYP_S5 = 0;

export class AcpiPm implements BusDevice {
  private sts = 0;
  private en = 0;
  private cnt = 0;

  constructor(private readonly onPowerOff: () => void) {}

  read(offset: number, size: number): number {
    const regs = this.sts | (this.en << 16);
    if (offset < 4) return (regs >>> (offset * 8)) & (size >= 4 ? 0xffffffff : (1 << (size * 8)) - 1);
    return (this.cnt >>> ((offset - 4) * 8)) & 0xffff;
  }

  write(offset: number, _size: number, value: number): void {
    if (offset === 0) this.sts &= ~value; // write-one-to-clear
    else if (offset === 2) this.en = value & 0xffff;
    else if (offset === 4) {
      this.cnt = value & ~SLP_EN & 0xffff;
      if (value & SLP_EN && ((value >> SLP_TYP_SHIFT) & 7) === SLP_TYP_S5) this.onPowerOff();
    }
  }

  save(): { sts: number; en: number; cnt: number } {
    return { sts: this.sts, en: this.en, cnt: this.cnt };
  }

  restore(s: { sts: number; en: number; cnt: number }): void {
    this.sts = s.sts; this.en = s.en; this.cnt = s.cnt;
  }
}

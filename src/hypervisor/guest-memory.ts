/**
 * Guest RAM as TypeScript sees it: one or more host mappings of the same memory fd placed
 * at guest-physical ranges (RAM below the 32-bit PCI hole, and the rest above 4 GiB).
 * Every access is bounds-checked against those ranges, because guest-controlled addresses
 * (descriptor tables, buffers) reach these functions: a bad address is a GuestMemoryError,
 * never an out-of-bounds host access.
 */
import { BatonError } from '../util/errors';

export interface GuestRamRegion {
  /** Guest-physical start. */
  readonly gpa: number;
  readonly size: number;
  /** Offset of this region inside the memory fd. */
  readonly fdOffset: number;
  /** Host mapping of exactly this region. */
  readonly bytes: Uint8Array;
  /** Host virtual address of the mapping (for KVM_SET_USER_MEMORY_REGION). */
  readonly hostAddress: bigint;
}

export class GuestMemoryError extends BatonError {
  constructor(gpa: number, len: number) {
    super('EGUESTADDR', `guest address range 0x${gpa.toString(16)}+${len} is not guest RAM`, { gpa, len });
  }
}

export class GuestMemory {
  constructor(readonly regions: readonly GuestRamRegion[]) {}

  get totalSize(): number {
    return this.regions.reduce((n, r) => n + r.size, 0);
  }

  /** The region and offset holding [gpa, gpa+len), or throws. Ranges may not straddle regions. */
  locate(gpa: number, len: number): { region: GuestRamRegion; offset: number } {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) throw new GuestMemoryError(gpa, len);
    for (const region of this.regions) {
      if (gpa >= region.gpa && gpa + len <= region.gpa + region.size) return { region, offset: gpa - region.gpa };
    }
    throw new GuestMemoryError(gpa, len);
  }

  /** A view (no copy) of guest memory. */
  slice(gpa: number, len: number): Uint8Array {
    const { region, offset } = this.locate(gpa, len);
    return region.bytes.subarray(offset, offset + len);
  }

  /** A DataView over [gpa, gpa+len). */
  view(gpa: number, len: number): DataView {
    const s = this.slice(gpa, len);
    return new DataView(s.buffer, s.byteOffset, s.byteLength);
  }

  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length).set(data);
  }

  fill(gpa: number, len: number, value = 0): void {
    this.slice(gpa, len).fill(value);
  }

  read(gpa: number, len: number): Buffer {
    return Buffer.from(this.slice(gpa, len));
  }
}

/**
 * Byte layouts defined once: a struct is a table of named fields with their offsets and
 * types, read and written through DataView (little-endian, as on x86). Kernel and guest
 * ABI structs (kvm_regs, boot_params, hvm_start_info, MP tables, vrings) are declared with
 * this so that offsets sit beside names instead of being scattered through the code.
 */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64';

export interface FieldSpec {
  readonly offset: number;
  readonly type: FieldType;
}

export const FIELD_SIZE: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export class Struct<F extends Record<string, FieldSpec>> {
  constructor(
    readonly name: string,
    readonly size: number,
    readonly fields: F,
  ) {
    for (const [fieldName, f] of Object.entries(fields)) {
      if (f.offset + FIELD_SIZE[f.type] > size) {
        throw new Error(`struct ${name}: field ${fieldName} at ${f.offset} overflows size ${size}`);
      }
    }
  }

  /** Reads a field; u64 fields come back as bigint, the others as number. */
  get(view: DataView, base: number, field: keyof F): number | bigint {
    const f = this.fields[field];
    const at = base + f.offset;
    switch (f.type) {
      case 'u8': return view.getUint8(at);
      case 'u16': return view.getUint16(at, true);
      case 'u32': return view.getUint32(at, true);
      case 'u64': return view.getBigUint64(at, true);
    }
  }

  /** Reads a field as a number (u64 fields must fit in 2^53). */
  num(view: DataView, base: number, field: keyof F): number {
    return Number(this.get(view, base, field));
  }

  set(view: DataView, base: number, field: keyof F, value: number | bigint): void {
    const f = this.fields[field];
    const at = base + f.offset;
    switch (f.type) {
      case 'u8': view.setUint8(at, Number(value)); break;
      case 'u16': view.setUint16(at, Number(value), true); break;
      case 'u32': view.setUint32(at, Number(value) >>> 0, true); break;
      case 'u64': view.setBigUint64(at, BigInt(value), true); break;
    }
  }

  /** Writes several fields at once. */
  assign(view: DataView, base: number, values: Partial<Record<keyof F, number | bigint>>): void {
    for (const [k, v] of Object.entries(values)) {
      if (v !== undefined) this.set(view, base, k as keyof F, v as number | bigint);
    }
  }
}

/** Shorthand for building field tables: fields('u64', ['rax', 0], ['rbx', 8]). */
export function f(offset: number, type: FieldType): FieldSpec {
  return { offset, type };
}

export function viewOf(buf: Buffer | Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

import { DomainErrorCode, xmlError } from './errors';

/**
 * libvirt's memory units (virScaleInteger): `b`/`byte`/`bytes`; a letter k, m, g, t, p, e
 * alone or followed by `iB` means powers of 1024; followed by `B` means powers of 1000.
 * Case-insensitive, as in libvirt. Without a unit, libvirt means KiB.
 */
const UNIT_EXPONENT: Record<string, number> = { k: 1, m: 2, g: 3, t: 4, p: 5, e: 6 };

export function unitScale(unit: string): bigint | undefined {
  const lower = unit.toLowerCase();
  if (lower === 'b' || lower === 'byte' || lower === 'bytes') return 1n;
  const exponent = UNIT_EXPONENT[lower[0] ?? ''];
  if (exponent === undefined) return undefined;
  const rest = lower.slice(1);
  if (rest === '' || rest === 'ib') return 1024n ** BigInt(exponent);
  if (rest === 'b') return 1000n ** BigInt(exponent);
  return undefined;
}

const KIB = 1024n;
const MIB = 1024n * 1024n;

/**
 * Parses `<memory unit=...>N</memory>` into KiB. Like libvirt's QEMU driver, the size is
 * rounded up to a whole MiB (guest RAM is mapped in MiB-aligned slots).
 */
export function parseMemoryKiB(text: string, unit: string | undefined, path: string): number {
  if (!/^\d+$/.test(text)) {
    throw xmlError(DomainErrorCode.XmlInvalid, path, `'${text}' is not a whole number (write e.g. <memory unit='MiB'>256</memory>)`);
  }
  const scale = unitScale(unit ?? 'KiB');
  if (scale === undefined) {
    throw xmlError(DomainErrorCode.XmlInvalid, `${path}/@unit`, `unknown unit '${unit}'; use b, KiB (k), MiB (M), GiB (G), TiB (T), or KB, MB, GB, TB for powers of 1000`);
  }
  const bytes = BigInt(text) * scale;
  const roundedToMiB = ((bytes + MIB - 1n) / MIB) * MIB;
  const kib = roundedToMiB / KIB;
  // Above this the number would not be exact in a JS number; far beyond Baton's limits anyway.
  if (kib > BigInt(Number.MAX_SAFE_INTEGER)) throw xmlError(DomainErrorCode.XmlInvalid, path, `${text} ${unit ?? 'KiB'} is absurdly large`);
  return Number(kib);
}

/** `262144` KiB → `256 MiB`, for messages. */
export function formatKiB(kib: number): string {
  if (kib % (1024 * 1024) === 0) return `${kib / (1024 * 1024)} GiB`;
  if (kib % 1024 === 0) return `${kib / 1024} MiB`;
  return `${kib} KiB`;
}

/**
 * JSON output exactly as QEMU's QMP writes it (qobject_to_json, compact mode), so a client
 * that compares bytes or is picky about formatting sees no difference:
 *   - `", "` between members and `": "` after keys; `{}` and `[]` when empty;
 *   - every character outside printable ASCII escaped as `\uXXXX` with upper-case hex
 *     (`é` -> `\u00E9`, astral characters as their surrogate pair), `/` left alone;
 *   - integers in decimal (bigint for values outside JavaScript's safe range), other
 *     numbers as C's `%.17g` (`0.1` -> `0.10000000000000001`), infinities as `inf`.
 * Each message on the wire ends with CRLF, as QEMU's monitor sends it.
 */

/** Any value a QMP message can carry. Integers outside 2^53 arrive and leave as bigint. */
export type QmpValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | QmpValue[]
  | { [key: string]: QmpValue };

export const QMP_LINE_END = '\r\n';

const NAMED_ESCAPES: Record<number, string> = {
  0x08: '\\b',
  0x09: '\\t',
  0x0a: '\\n',
  0x0c: '\\f',
  0x0d: '\\r',
  0x22: '\\"',
  0x5c: '\\\\',
};

export function formatQmpString(text: string): string {
  let out = '"';
  let plainStart = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0x20 && unit < 0x7f && unit !== 0x22 && unit !== 0x5c) continue;
    out += text.slice(plainStart, i);
    out += NAMED_ESCAPES[unit] ?? '\\u' + unit.toString(16).toUpperCase().padStart(4, '0');
    plainStart = i + 1;
  }
  return out + text.slice(plainStart) + '"';
}

/** C's printf("%.17g"): 17 significant digits, trailing zeros dropped, exponent when tiny or huge. */
export function formatCDouble17g(value: number): string {
  if (Number.isNaN(value)) return 'nan';
  if (value === Infinity) return 'inf';
  if (value === -Infinity) return '-inf';
  if (Object.is(value, -0)) return '-0';
  const [mantissa, exponentText] = value.toExponential(16).split('e');
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 17) {
    const digits = stripTrailingZeros(mantissa);
    const sign = exponent < 0 ? '-' : '+';
    return `${digits}e${sign}${String(Math.abs(exponent)).padStart(2, '0')}`;
  }
  return stripTrailingZeros(value.toFixed(16 - exponent));
}

function stripTrailingZeros(decimal: string): string {
  if (!decimal.includes('.')) return decimal;
  return decimal.replace(/0+$/, '').replace(/\.$/, '');
}

function formatNumber(value: number): string {
  if (Number.isSafeInteger(value) && !Object.is(value, -0)) return String(value);
  return formatCDouble17g(value);
}

/** Serializes a value the way QEMU does. `undefined` members are left out, as JSON.stringify does. */
export function formatQmpJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      return formatNumber(value);
    case 'bigint':
      return value.toString();
    case 'string':
      return formatQmpString(value);
    case 'object':
      break;
    default:
      throw new TypeError(`cannot send a ${typeof value} over QMP: only JSON values can travel`);
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return '[' + value.map((item) => formatQmpJson(item)).join(', ') + ']';
  }
  const members: string[] = [];
  for (const [key, member] of Object.entries(value as Record<string, unknown>)) {
    if (member === undefined) continue;
    members.push(formatQmpString(key) + ': ' + formatQmpJson(member));
  }
  return members.length === 0 ? '{}' : '{' + members.join(', ') + '}';
}

/** One complete wire message: the JSON text followed by CRLF. */
export function encodeQmpMessage(value: unknown): Buffer {
  return Buffer.from(formatQmpJson(value) + QMP_LINE_END, 'utf8');
}

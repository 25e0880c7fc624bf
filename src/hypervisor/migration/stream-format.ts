/**
 * The VM state stream (save files and migration channels), defined once:
 *
 *   header   "BATONVM\0" magic (8) | format version u32 | flags u32
 *   section  tag 0x01 u8 | name length u16 | name (utf-8) | section version u32
 *            | payload length u64 | payload | crc32(payload) u32
 *   end      tag 0xFF u8 | section count u32
 *
 * Each device names its section and versions it; a reader refuses an unknown format
 * version, an unknown or newer section version, a bad checksum or a short read, and says
 * which section was at fault. Payloads are "records": a JSON head (named scalar state)
 * plus named binary blobs (kernel structs, buffers) — named, never positional.
 */
import { crc32 } from 'node:zlib';
import { BatonError } from '../../util/errors';

export const STREAM_MAGIC = Buffer.from('BATONVM\0', 'latin1');
export const STREAM_VERSION = 1;
export const TAG_SECTION = 0x01;
export const TAG_END = 0xff;
export const HEADER_SIZE = 16;
export const MAX_SECTION_NAME = 256;

export class StreamError extends BatonError {
  constructor(message: string, section?: string) {
    super('ESTREAM', section ? `VM state stream, section "${section}": ${message}` : `VM state stream: ${message}`, { section });
  }
}

export function encodeHeader(flags = 0): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  STREAM_MAGIC.copy(b, 0);
  b.writeUInt32LE(STREAM_VERSION, 8);
  b.writeUInt32LE(flags, 12);
  return b;
}

export function decodeHeader(b: Buffer): { version: number; flags: number } {
  if (b.length < HEADER_SIZE) throw new StreamError(`truncated header (${b.length} of ${HEADER_SIZE} bytes)`);
  if (!b.subarray(0, 8).equals(STREAM_MAGIC)) throw new StreamError('not a Baton VM state stream (bad magic)');
  const version = b.readUInt32LE(8);
  if (version !== STREAM_VERSION) throw new StreamError(`format version ${version} is not supported (this build reads ${STREAM_VERSION})`);
  return { version, flags: b.readUInt32LE(12) };
}

/** Section head before the payload: tag, name, version, length. */
export function encodeSectionHead(name: string, version: number, payloadLength: number): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length > MAX_SECTION_NAME) throw new StreamError('section name too long', name);
  const b = Buffer.alloc(1 + 2 + nameBytes.length + 4 + 8);
  let p = b.writeUInt8(TAG_SECTION, 0);
  p = b.writeUInt16LE(nameBytes.length, p);
  p += nameBytes.copy(b, p);
  p = b.writeUInt32LE(version, p);
  b.writeBigUInt64LE(BigInt(payloadLength), p);
  return b;
}

export function encodeSection(name: string, version: number, payload: Buffer): Buffer[] {
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(payload) >>> 0);
  return [encodeSectionHead(name, version, payload.length), payload, crc];
}

export function encodeEnd(sectionCount: number): Buffer {
  const b = Buffer.alloc(5);
  b.writeUInt8(TAG_END, 0);
  b.writeUInt32LE(sectionCount, 1);
  return b;
}

export function checkCrc(name: string, payload: Buffer, crcBytes: Buffer): void {
  if (crcBytes.length < 4) throw new StreamError('truncated checksum', name);
  if ((crc32(payload) >>> 0) !== crcBytes.readUInt32LE(0)) throw new StreamError('checksum mismatch (corrupt data)', name);
}

// ---- records: JSON head + named blobs ----

export interface Record {
  head: unknown;
  blobs: Map<string, Buffer>;
}

/** u32 JSON length | JSON {head, blobs: {name: length}} | blobs in that order */
export function encodeRecord(head: unknown, blobs: { [name: string]: Buffer } = {}): Buffer {
  const index = Object.fromEntries(Object.entries(blobs).map(([k, v]) => [k, v.length]));
  const json = Buffer.from(JSON.stringify({ head, blobs: index }), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  return Buffer.concat([len, json, ...Object.values(blobs)]);
}

export function decodeRecord(section: string, payload: Buffer): Record {
  if (payload.length < 4) throw new StreamError('record too short', section);
  const jsonLen = payload.readUInt32LE(0);
  if (4 + jsonLen > payload.length) throw new StreamError('record head runs past the payload', section);
  let parsed: { head: unknown; blobs: { [k: string]: number } };
  try {
    parsed = JSON.parse(payload.toString('utf8', 4, 4 + jsonLen));
  } catch {
    throw new StreamError('record head is not valid JSON', section);
  }
  const blobs = new Map<string, Buffer>();
  let p = 4 + jsonLen;
  for (const [name, len] of Object.entries(parsed.blobs ?? {})) {
    if (!Number.isInteger(len) || len < 0 || p + len > payload.length) throw new StreamError(`blob "${name}" runs past the payload`, section);
    blobs.set(name, payload.subarray(p, p + len));
    p += len;
  }
  return { head: parsed.head, blobs };
}

export function blob(rec: Record, section: string, name: string, size?: number): Buffer {
  const b = rec.blobs.get(name);
  if (!b) throw new StreamError(`missing "${name}"`, section);
  if (size !== undefined && b.length !== size) throw new StreamError(`"${name}" is ${b.length} bytes, expected ${size}`, section);
  return b;
}

/**
 * The completer's decoder on hand-assembled encodings: prefixes, REX, ModRM/SIB forms,
 * lengths, and what it refuses to decode.
 */
import { CodeMode, decodeInstruction } from '../../src/hypervisor/x86/insn-decode';

const long64: CodeMode = { long64: true, default32: false };
const prot32: CodeMode = { long64: false, default32: true };
const real16: CodeMode = { long64: false, default32: false };

function decode(bytes: number[], mode = long64) {
  const r = decodeInstruction(Uint8Array.from(bytes), mode);
  if (!r.ok) throw new Error(r.reason);
  return r.insn;
}

describe('decodeInstruction', () => {
  it('decodes the one- and fixed-ModRM forms with their lengths', () => {
    expect(decode([0xcc, 0x90])).toMatchObject({ mnemonic: 'int3', length: 1 });
    expect(decode([0x9b])).toMatchObject({ mnemonic: 'fwait', length: 1 });
    expect(decode([0x0f, 0x01, 0xca])).toMatchObject({ mnemonic: 'clac', length: 3 });
    expect(decode([0x0f, 0x01, 0xcb])).toMatchObject({ mnemonic: 'stac', length: 3 });
    expect(decode([0x0f, 0xae, 0xe8])).toMatchObject({ mnemonic: 'lfence', length: 3 });
    expect(decode([0x0f, 0xae, 0xf0])).toMatchObject({ mnemonic: 'mfence', length: 3 });
    expect(decode([0x0f, 0xae, 0xf8])).toMatchObject({ mnemonic: 'sfence', length: 3 });
  });

  it('popcnt: mandatory F3, operand size from REX.W and 66, REX.R/B registers', () => {
    expect(decode([0xf3, 0x0f, 0xb8, 0xc3])).toMatchObject({ mnemonic: 'popcnt', length: 4, operandBytes: 4, modrm: { mod: 3, reg: 0, rm: 3 } });
    expect(decode([0xf3, 0x48, 0x0f, 0xb8, 0xc3])).toMatchObject({ operandBytes: 8, length: 5 });
    expect(decode([0x66, 0xf3, 0x0f, 0xb8, 0xcb])).toMatchObject({ operandBytes: 2, modrm: { reg: 1, rm: 3 } });
    expect(decode([0xf3, 0x4d, 0x0f, 0xb8, 0xda])).toMatchObject({ operandBytes: 8, modrm: { reg: 11, rm: 10 } });
    // Without F3, 0f b8 is JMPE (Itanium), not popcnt.
    expect(decodeInstruction(Uint8Array.from([0x0f, 0xb8, 0xc3]), long64)).toMatchObject({ ok: false });
  });

  it('memory operands: SIB with scale/index/disp8, RIP-relative, no-base disp32, segment override', () => {
    expect(decode([0xf3, 0x0f, 0xb8, 0x4c, 0xb3, 0x08]).modrm?.memory).toEqual(
      { base: 'rbx', index: 'rsi', scale: 4, disp: 8n, ripRelative: false, defaultSegment: 'ds' });
    expect(decode([0x0f, 0xae, 0x54, 0x24, 0x04])).toMatchObject({ mnemonic: 'ldmxcsr', length: 5, modrm: { memory: { base: 'rsp', disp: 4n, defaultSegment: 'ss' } } });
    expect(decode([0x0f, 0xae, 0x15, 0xf0, 0xff, 0xff, 0xff])).toMatchObject({ length: 7, modrm: { memory: { ripRelative: true, disp: -16n } } });
    // SIB base 101 with mod 00: disp32, no base; index 100: none.
    expect(decode([0x0f, 0xae, 0x1c, 0x25, 0x00, 0x10, 0x00, 0x00]).modrm?.memory).toEqual(
      { scale: 1, disp: 0x1000n, ripRelative: false, defaultSegment: 'ds' });
    expect(decode([0x65, 0x0f, 0xae, 0x1b])).toMatchObject({ mnemonic: 'stmxcsr', prefixes: { segment: 'gs' } });
    // REX.X selects r12 as index; REX.B with base 101 and mod 01 is r13+disp8.
    expect(decode([0x43, 0x0f, 0xae, 0x54, 0xa5, 0x10]).modrm?.memory).toMatchObject({ base: 'r13', index: 'r12', scale: 4, disp: 16n });
  });

  it('in 32-bit code: mod 00 rm 101 is an absolute disp32, and 0x4x is not REX', () => {
    expect(decode([0x0f, 0xae, 0x15, 0x00, 0x20, 0x00, 0x00], prot32).modrm?.memory).toMatchObject({ ripRelative: false, disp: 0x2000n });
    expect(decodeInstruction(Uint8Array.from([0x48, 0xcc]), prot32)).toMatchObject({ ok: false });
  });

  it('refuses what it does not know, 16-bit addressing, and truncated or over-long encodings', () => {
    expect(decodeInstruction(Uint8Array.from([0xf2, 0x0f, 0x38, 0xf1, 0xc3]), long64)).toEqual({ ok: false, reason: expect.stringMatching(/not in the completion set/) });
    expect(decodeInstruction(Uint8Array.from([0x0f, 0xae, 0x07]), long64)).toEqual({ ok: false, reason: expect.stringMatching(/\/0.*not in the completion set/) });
    expect(decodeInstruction(Uint8Array.from([0x0f, 0xae, 0x17]), real16)).toEqual({ ok: false, reason: expect.stringMatching(/16-bit addressing/) });
    expect(decodeInstruction(Uint8Array.from([0xf3, 0x0f, 0xb8]), long64)).toMatchObject({ ok: false });
    expect(decodeInstruction(Uint8Array.from([...Array(14).fill(0x66), 0x0f, 0x01, 0xca]), long64)).toMatchObject({ ok: false });
    // The F3 popcnt prefix on clac's opcode makes it something else.
    expect(decodeInstruction(Uint8Array.from([0xf3, 0x0f, 0x01, 0xca]), long64)).toMatchObject({ ok: false });
  });
});

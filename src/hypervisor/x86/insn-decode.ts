/**
 * A small x86 instruction decoder for the instruction completer: legacy prefixes, REX,
 * one/two-byte opcodes, ModRM/SIB/displacement, for the few instruction forms the host's
 * emulator rejects and Baton completes. It decodes only the forms in FORMS; anything else
 * is reported as unknown (with its bytes) rather than guessed at.
 */

/** x86 register encoding order (ModRM.reg/rm, SIB base/index, with REX.R/X/B as bit 3). */
export const GPR_BY_ENCODING = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;
export type GprName = (typeof GPR_BY_ENCODING)[number];

export type SegmentPrefix = 'es' | 'cs' | 'ss' | 'ds' | 'fs' | 'gs';
const SEGMENT_PREFIXES: Record<number, SegmentPrefix> = { 0x26: 'es', 0x2e: 'cs', 0x36: 'ss', 0x3e: 'ds', 0x64: 'fs', 0x65: 'gs' };
const PREFIX_OPERAND_SIZE = 0x66;
const PREFIX_ADDRESS_SIZE = 0x67;
const PREFIX_LOCK = 0xf0;
const PREFIX_REPNE = 0xf2;
const PREFIX_REP = 0xf3;
const TWO_BYTE_ESCAPE = 0x0f;
/** The architectural limit; longer encodings raise #GP. */
export const MAX_INSTRUCTION_LENGTH = 15;

/** The code segment's mode, which sets default operand/address sizes and REX's meaning. */
export interface CodeMode {
  /** 64-bit mode (EFER.LMA and CS.L). */
  long64: boolean;
  /** CS.D: 32-bit defaults outside 64-bit mode (false = 16-bit code). */
  default32: boolean;
}

export interface Prefixes {
  operandSize: boolean;
  addressSize: boolean;
  lock: boolean;
  rep: boolean;
  repne: boolean;
  segment?: SegmentPrefix;
  /** The REX byte (0 when absent); only meaningful in 64-bit mode. */
  rex: number;
}

/** A memory operand: EA = base + index*scale + disp (+ next RIP when ripRelative). */
export interface MemoryOperand {
  base?: GprName;
  index?: GprName;
  scale: number;
  disp: bigint;
  ripRelative: boolean;
  /** Default segment (SS for rsp/rbp-based, DS otherwise), before any override. */
  defaultSegment: SegmentPrefix;
}

export interface ModRm {
  mod: number;
  /** ModRM.reg with REX.R. */
  reg: number;
  /** ModRM.rm with REX.B (meaningful when mod == 3). */
  rm: number;
  memory?: MemoryOperand;
}

/** The instructions Baton knows how to complete (see insn-completer.ts for their semantics). */
export type Mnemonic = 'int3' | 'fwait' | 'clac' | 'stac' | 'popcnt' | 'ldmxcsr' | 'stmxcsr'
  | 'lfence' | 'mfence' | 'sfence' | 'rdtscp';

export interface DecodedInstruction {
  mnemonic: Mnemonic;
  length: number;
  prefixes: Prefixes;
  /** Operand size in bytes for instructions with a general-register operand. */
  operandBytes: 2 | 4 | 8;
  /** Address size in bytes for memory operands. */
  addressBytes: 2 | 4 | 8;
  modrm?: ModRm;
}

export type DecodeResult = { ok: true; insn: DecodedInstruction } | { ok: false; reason: string };

/**
 * The forms decoded, by opcode bytes after prefixes. `modrm`: 'none', 'any' (a ModRM
 * follows), or a fixed ModRM byte that is part of the opcode. `reg`: required ModRM.reg;
 * `memoryOnly`/`registerOnly`: allowed ModRM.mod. `mandatory`: the mandatory prefix.
 */
interface Form {
  mnemonic: Mnemonic;
  opcode: number[];
  modrm: 'none' | 'any' | number;
  reg?: number;
  memoryOnly?: boolean;
  mandatory?: typeof PREFIX_REP;
}

const FORMS: Form[] = [
  { mnemonic: 'int3', opcode: [0xcc], modrm: 'none' },
  { mnemonic: 'fwait', opcode: [0x9b], modrm: 'none' },
  { mnemonic: 'clac', opcode: [0x0f, 0x01], modrm: 0xca },
  { mnemonic: 'stac', opcode: [0x0f, 0x01], modrm: 0xcb },
  { mnemonic: 'popcnt', opcode: [0x0f, 0xb8], modrm: 'any', mandatory: PREFIX_REP },
  { mnemonic: 'ldmxcsr', opcode: [0x0f, 0xae], modrm: 'any', reg: 2, memoryOnly: true },
  { mnemonic: 'stmxcsr', opcode: [0x0f, 0xae], modrm: 'any', reg: 3, memoryOnly: true },
  { mnemonic: 'lfence', opcode: [0x0f, 0xae], modrm: 0xe8 },
  { mnemonic: 'mfence', opcode: [0x0f, 0xae], modrm: 0xf0 },
  { mnemonic: 'sfence', opcode: [0x0f, 0xae], modrm: 0xf8 },
  { mnemonic: 'rdtscp', opcode: [0x0f, 0x01], modrm: 0xf9 },
];

export function hex(bytes: Uint8Array | number[]): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

class ByteReader {
  at = 0;
  constructor(private readonly bytes: Uint8Array) {}
  u8(): number {
    if (this.at >= this.bytes.length || this.at >= MAX_INSTRUCTION_LENGTH) throw new RangeError('instruction runs past the bytes available');
    return this.bytes[this.at++];
  }
  peek(): number | undefined {
    return this.at < this.bytes.length ? this.bytes[this.at] : undefined;
  }
  signed(size: 1 | 4): bigint {
    let v = 0;
    for (let i = 0; i < size; i++) v += this.u8() * 2 ** (8 * i);
    return BigInt(size === 1 ? (v << 24) >> 24 : v | 0);
  }
}

/** Decodes one instruction from `bytes` (those at CS:RIP) in `mode`. */
export function decodeInstruction(bytes: Uint8Array, mode: CodeMode): DecodeResult {
  const r = new ByteReader(bytes);
  try {
    const prefixes = readPrefixes(r, mode);
    const first = r.u8();
    const opcode = first === TWO_BYTE_ESCAPE ? [first, r.u8()] : [first];
    const candidates = FORMS.filter((f) => f.opcode.length === opcode.length && f.opcode.every((b, i) => b === opcode[i]));
    if (candidates.length === 0) return { ok: false, reason: `opcode ${hex(opcode)} is not in the completion set` };
    const needsModrm = candidates.some((f) => f.modrm !== 'none');
    const modrmByte = needsModrm ? r.peek() : undefined;
    if (needsModrm && modrmByte === undefined) throw new RangeError('instruction runs past the bytes available');
    const form = candidates.find((f) => {
      // F3 selects popcnt; on other two-byte opcodes F2/F3 select different instructions.
      const prefixMismatch = f.mandatory === PREFIX_REP ? !prefixes.rep : f.opcode[0] === TWO_BYTE_ESCAPE && (prefixes.rep || prefixes.repne);
      if (prefixMismatch) return false;
      if (typeof f.modrm === 'number') return f.modrm === modrmByte;
      if (f.modrm === 'any') {
        const byte = modrmByte as number;
        if (f.reg !== undefined && ((byte >> 3) & 7) !== f.reg) return false;
        if (f.memoryOnly && byte >> 6 === 3) return false;
      }
      return true;
    });
    if (!form) {
      const detail = modrmByte !== undefined ? ` /${(modrmByte >> 3) & 7} (ModRM ${hex([modrmByte])})` : '';
      const rep = prefixes.rep ? ' with F3' : prefixes.repne ? ' with F2' : '';
      return { ok: false, reason: `opcode ${hex(opcode)}${detail}${rep} is not in the completion set` };
    }
    const rexW = mode.long64 && (prefixes.rex & 0x8) !== 0;
    const operandBytes: 2 | 4 | 8 = rexW ? 8 : (mode.long64 || mode.default32) !== prefixes.operandSize ? 4 : 2;
    const addressBytes: 2 | 4 | 8 = mode.long64 ? (prefixes.addressSize ? 4 : 8) : mode.default32 !== prefixes.addressSize ? 4 : 2;
    let modrm: ModRm | undefined;
    if (typeof form.modrm === 'number') r.u8();
    else if (form.modrm === 'any') modrm = readModrm(r, prefixes, mode, addressBytes);
    return { ok: true, insn: { mnemonic: form.mnemonic, length: r.at, prefixes, operandBytes, addressBytes, modrm } };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

function readPrefixes(r: ByteReader, mode: CodeMode): Prefixes {
  const p: Prefixes = { operandSize: false, addressSize: false, lock: false, rep: false, repne: false, rex: 0 };
  for (;;) {
    const b = r.peek();
    if (b === undefined) throw new RangeError('instruction runs past the bytes available');
    if (b === PREFIX_OPERAND_SIZE) p.operandSize = true;
    else if (b === PREFIX_ADDRESS_SIZE) p.addressSize = true;
    else if (b === PREFIX_LOCK) p.lock = true;
    else if (b === PREFIX_REP) { p.rep = true; p.repne = false; } // the last of F2/F3 wins
    else if (b === PREFIX_REPNE) { p.repne = true; p.rep = false; }
    else if (SEGMENT_PREFIXES[b]) p.segment = SEGMENT_PREFIXES[b];
    else break;
    r.u8();
    p.rex = 0;
  }
  const b = r.peek() as number;
  // REX must come last, right before the opcode; in 64-bit mode only (0x40-0x4f is inc/dec elsewhere).
  if (mode.long64 && (b & 0xf0) === 0x40) p.rex = r.u8();
  return p;
}

function readModrm(r: ByteReader, p: Prefixes, mode: CodeMode, addressBytes: 2 | 4 | 8): ModRm {
  const byte = r.u8();
  const mod = byte >> 6;
  const rexR = p.rex & 0x4 ? 8 : 0;
  const rexX = p.rex & 0x2 ? 8 : 0;
  const rexB = p.rex & 0x1 ? 8 : 0;
  const reg = ((byte >> 3) & 7) | rexR;
  const rmLow = byte & 7;
  if (mod === 3) return { mod, reg, rm: rmLow | rexB };
  if (addressBytes === 2) throw new RangeError('16-bit addressing is not supported by the completer');
  const memory: MemoryOperand = { scale: 1, disp: 0n, ripRelative: false, defaultSegment: 'ds' };
  if (rmLow === 4) {
    const sib = r.u8();
    const scale = 1 << (sib >> 6);
    const index = ((sib >> 3) & 7) | rexX;
    const baseLow = sib & 7;
    if (index !== 4) { memory.index = GPR_BY_ENCODING[index]; memory.scale = scale; }
    if (baseLow === 5 && mod === 0) {
      memory.disp = r.signed(4);
    } else {
      memory.base = GPR_BY_ENCODING[baseLow | rexB];
    }
  } else if (rmLow === 5 && mod === 0) {
    memory.disp = r.signed(4);
    memory.ripRelative = mode.long64;
  } else {
    memory.base = GPR_BY_ENCODING[rmLow | rexB];
  }
  if (mod === 1) memory.disp = r.signed(1);
  else if (mod === 2) memory.disp = r.signed(4);
  if (memory.base === 'rsp' || memory.base === 'rbp') memory.defaultSegment = 'ss';
  return { mod, reg, rm: rmLow | rexB, memory };
}

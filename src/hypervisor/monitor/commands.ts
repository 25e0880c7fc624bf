/**
 * The command registry and a small QAPI-like schema for command arguments.
 *
 * Arguments are declared the way QEMU's qapi/*.json declares them — member names, `*` for
 * optional members, built-in types `str`, `int`, `uint64`, `bool`, `number`, `any`, enums,
 * arrays and nested structs — and checked before a handler runs, with QEMU's error texts
 * (`Parameter 'x' is missing`, `Invalid parameter type for 'x', expected: string`, ...).
 * Members are checked in declaration order, then unexpected members, as QEMU's visitor does.
 *
 * Integers reach handlers as `number` when they fit JavaScript's safe range, else as bigint.
 */
import type { QmpValue } from './json-format';
import { QmpErrors } from './qmp-errors';
import type { QmpFdTable, QmpMessageFds } from './fd-table';

/** QAPI built-in scalar types. The fixed-width ones are range-checked like QEMU's. */
export type QmpScalarType =
  | 'str'
  | 'bool'
  | 'number'
  | 'any'
  | 'null'
  | 'int'
  | 'int8'
  | 'int16'
  | 'int32'
  | 'int64'
  | 'uint8'
  | 'uint16'
  | 'uint32'
  | 'uint64'
  | 'size';

export type QmpType =
  | QmpScalarType
  | { enum: readonly string[] }
  | { array: QmpType }
  | { struct: QmpMembers };

/** Member name -> type; a leading `*` marks an optional member (`'*enable': {array: ...}`). */
export type QmpMembers = Readonly<Record<string, QmpType>>;

/** What a handler gets besides its arguments. */
export interface QmpCommandContext {
  /** Names given with getfd on this connection (QEMU's getfd fds belong to one monitor). */
  readonly fds: QmpFdTable;
  /** fds that arrived (SCM_RIGHTS) with this command's bytes; any left unclaimed are closed. */
  readonly messageFds: QmpMessageFds;
  /** Per-connection id, for logs. */
  readonly clientId: number;
  /** The command name as the client wrote it. */
  readonly command: string;
  /**
   * Runs `action` after a successful answer has been written (or at once if the client is
   * gone) — e.g. `quit` exits only after the client got its `{"return": {}}`.
   */
  afterResponse(action: () => void): void;
}

export type QmpHandler = (args: Record<string, unknown>, ctx: QmpCommandContext) => unknown | Promise<unknown>;

export interface QmpCommandDefinition {
  /** Argument schema; omit for a command that takes none. */
  args?: QmpMembers;
  handler: QmpHandler;
  /** May be run with `exec-oob` (out of band, bypassing the queue) once oob is enabled. */
  allowOob?: boolean;
  /** Accepted while the VM is in preconfig (recorded for the owner; QEMU's allow-preconfig). */
  allowInPreconfig?: boolean;
}

export interface QmpCommand extends QmpCommandDefinition {
  readonly name: string;
}

const INT_RANGES: Partial<Record<QmpScalarType, [bigint, bigint, string]>> = {
  int8: [-(1n << 7n), (1n << 7n) - 1n, 'int8_t'],
  int16: [-(1n << 15n), (1n << 15n) - 1n, 'int16_t'],
  int32: [-(1n << 31n), (1n << 31n) - 1n, 'int32_t'],
  uint8: [0n, (1n << 8n) - 1n, 'uint8_t'],
  uint16: [0n, (1n << 16n) - 1n, 'uint16_t'],
  uint32: [0n, (1n << 32n) - 1n, 'uint32_t'],
};
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const UINT64_MAX = (1n << 64n) - 1n;

/** A checked integer, as a number when it is exactly representable. */
function toHandlerInteger(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

/** The integer in a wire value, if it is one (QEMU: a JSON integer or a double without fraction is not enough). */
function wireInteger(value: unknown): bigint | undefined {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  return undefined;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Checks `value` against `type` and returns it as handlers see it. `path` is QEMU's full
 * name ('model.name', 'caps[0].state'); `leaf` is the bare member name QEMU uses in some
 * messages (enums, fixed-width integers), 'null' for list elements.
 */
function checkValue(type: QmpType, value: unknown, path: string, leaf: string): unknown {
  if (typeof type === 'object') {
    if ('enum' in type) {
      if (typeof value !== 'string') throw QmpErrors.parameterType(path, 'string');
      if (!type.enum.includes(value)) throw QmpErrors.enumValue(leaf, value);
      return value;
    }
    if ('array' in type) {
      if (!Array.isArray(value)) throw QmpErrors.parameterType(path, 'array');
      return value.map((item, index) => checkValue(type.array, item, `${path}[${index}]`, 'null'));
    }
    if (!isPlainObject(value)) throw QmpErrors.parameterType(path, 'object');
    return checkMembers(type.struct, value, `${path}.`);
  }
  switch (type) {
    case 'any':
      return value;
    case 'null':
      if (value !== null) throw QmpErrors.parameterType(path, 'null');
      return null;
    case 'str':
      if (typeof value !== 'string') throw QmpErrors.parameterType(path, 'string');
      return value;
    case 'bool':
      if (typeof value !== 'boolean') throw QmpErrors.parameterType(path, 'boolean');
      return value;
    case 'number':
      if (typeof value === 'number') return value;
      if (typeof value === 'bigint') return Number(value);
      throw QmpErrors.parameterType(path, 'number');
    case 'int':
    case 'int64':
      return toHandlerInteger(checkInt64(value, path));
    case 'uint64':
    case 'size':
      return toHandlerInteger(checkUint64(value, path));
    default: {
      // Fixed-width integers: QEMU reads a 64-bit one first (with its errors), then checks range.
      const [min, max, cName] = INT_RANGES[type] ?? [0n, 0n, ''];
      const integer = min < 0n ? checkInt64(value, path) : checkUint64(value, path);
      if (integer < min || integer > max) throw QmpErrors.parameterValue(leaf, cName);
      return Number(integer);
    }
  }
}

function checkInt64(value: unknown, path: string): bigint {
  const integer = wireInteger(value);
  if (integer === undefined || integer < INT64_MIN || integer > INT64_MAX) {
    throw QmpErrors.parameterType(path, 'integer');
  }
  return integer;
}

/** QEMU accepts a negative int64 too (for backward compatibility) and wraps it. */
function checkUint64(value: unknown, path: string): bigint {
  const integer = wireInteger(value);
  if (integer === undefined || integer < INT64_MIN || integer > UINT64_MAX) {
    throw QmpErrors.parameterValue(path, 'uint64');
  }
  return integer < 0n ? integer + (1n << 64n) : integer;
}

function checkMembers(members: QmpMembers, given: Record<string, unknown>, prefix: string): Record<string, unknown> {
  const checked: Record<string, unknown> = {};
  const known = new Set<string>();
  for (const [declared, type] of Object.entries(members)) {
    const optional = declared.startsWith('*');
    const name = optional ? declared.slice(1) : declared;
    known.add(name);
    if (!Object.prototype.hasOwnProperty.call(given, name)) {
      if (optional) continue;
      throw QmpErrors.parameterMissing(prefix + name);
    }
    Object.defineProperty(checked, name, {
      value: checkValue(type, given[name], prefix + name, name),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  for (const name of Object.keys(given)) {
    if (!known.has(name)) throw QmpErrors.parameterUnexpected(prefix + name);
  }
  return checked;
}

/** Checks a command's `arguments` object (absent means `{}`); throws a QmpError on the first problem. */
export function checkArguments(members: QmpMembers | undefined, given: Record<string, QmpValue> | undefined) {
  return checkMembers(members ?? {}, given ?? {}, '');
}

/** Validates a schema when a command is registered, so a typo fails at start-up, not at first use. */
function assertValidType(type: QmpType, where: string): void {
  if (typeof type === 'string') {
    const scalars: readonly string[] = ['str', 'bool', 'number', 'any', 'null', 'int', 'int64', 'uint64', 'size'];
    if (!scalars.includes(type) && !(type in INT_RANGES)) {
      throw new Error(`QMP schema for ${where} names unknown type '${type}'`);
    }
  } else if ('array' in type) assertValidType(type.array, `${where}[]`);
  else if ('struct' in type) {
    for (const [name, member] of Object.entries(type.struct)) assertValidType(member, `${where}.${name}`);
  } else if (!('enum' in type) || type.enum.length === 0) {
    throw new Error(`QMP schema for ${where} has an empty or malformed type`);
  }
}

export class QmpCommandRegistry {
  private readonly commands = new Map<string, QmpCommand>();

  register(name: string, definition: QmpCommandDefinition): void {
    if (this.commands.has(name)) {
      throw new Error(`QMP command '${name}' is already registered: each command has one owner`);
    }
    for (const [member, type] of Object.entries(definition.args ?? {})) assertValidType(type, `${name}.${member}`);
    this.commands.set(name, { ...definition, name });
  }

  unregister(name: string): boolean {
    return this.commands.delete(name);
  }

  get(name: string): QmpCommand | undefined {
    return this.commands.get(name);
  }

  has(name: string): boolean {
    return this.commands.has(name);
  }

  /** Command names in registration order. */
  names(): string[] {
    return [...this.commands.keys()];
  }
}

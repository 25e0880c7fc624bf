/**
 * Streaming JSON reader for the QMP wire, behaving like QEMU 7.2's json-lexer /
 * json-streamer / json-parser trio so that clients get the same answers to the same bytes:
 *
 *  - input is a byte stream; messages may be split across reads or several may share one
 *    read, separated by whitespace or nothing at all;
 *  - a message ends when its braces and brackets balance (or a closer appears with nothing
 *    open), so a top-level scalar is a message on its own;
 *  - lexical errors ("stray '...'"), grammar errors ("expecting value", ...) and limits
 *    (size, nesting) produce an error message; after a lexical error the reader skips
 *    input until a structural character or a control character (newline), as QEMU does,
 *    and after any error it starts afresh — so a client can always resynchronise by
 *    sending a control character such as 0x1B, as the QMP spec advises;
 *  - a message that breaks a limit gets one error and the rest of it is dropped (see
 *    overLimit for how this differs from QEMU 7.2);
 *  - QEMU's extensions are accepted: single-quoted strings and `\'`.
 *
 * Error texts are QEMU's, captured from a running QEMU 7.2 (see test/monitor). QEMU's
 * 64 MiB per-message limit is configurable here (the monitor uses 1 MiB).
 */
import type { QmpValue } from './json-format';

export interface JsonStreamLimits {
  /** Bytes of tokens (whitespace not counted) one message may hold. */
  maxMessageBytes: number;
  /** Open braces plus brackets one message may have at once. */
  maxNesting: number;
}

export const QEMU_JSON_LIMITS: JsonStreamLimits = { maxMessageBytes: 64 << 20, maxNesting: 1024 };

/** What the reader hands on: a parsed value, or the text of a QEMU "JSON ..." error. */
export type JsonStreamItem = { value: QmpValue } | { error: string };

enum TokenType {
  LeftCurly,
  RightCurly,
  LeftSquare,
  RightSquare,
  Colon,
  Comma,
  String,
  Integer,
  Float,
  Keyword,
}

interface Token {
  type: TokenType;
  /** Decoded value for strings and numbers, raw text for keywords. */
  value?: QmpValue;
  /** A string token whose escapes or UTF-8 were bad: reported when the parser reaches it. */
  decodeError?: string;
}

enum LexState {
  Start,
  String,
  StringEscape,
  Zero,
  Minus,
  IntegerDigits,
  FractionStart,
  FractionDigits,
  ExponentStart,
  ExponentSign,
  ExponentDigits,
  Keyword,
  /** After a lexical error: skip to a character that cannot be inside a token. */
  Recovery,
}

const CH = {
  tab: 0x09,
  lf: 0x0a,
  cr: 0x0d,
  space: 0x20,
  doubleQuote: 0x22,
  singleQuote: 0x27,
  plus: 0x2b,
  comma: 0x2c,
  minus: 0x2d,
  dot: 0x2e,
  zero: 0x30,
  one: 0x31,
  nine: 0x39,
  colon: 0x3a,
  upperE: 0x45,
  leftSquare: 0x5b,
  backslash: 0x5c,
  rightSquare: 0x5d,
  lowerA: 0x61,
  lowerE: 0x65,
  lowerZ: 0x7a,
  leftCurly: 0x7b,
  rightCurly: 0x7d,
  /** 0xFE and 0xFF never occur in UTF-8: QEMU treats them as hard errors (resync bytes). */
  firstImpossibleUtf8: 0xfe,
} as const;

const SINGLE_CHAR_TOKENS: Partial<Record<number, TokenType>> = {
  [CH.leftCurly]: TokenType.LeftCurly,
  [CH.rightCurly]: TokenType.RightCurly,
  [CH.leftSquare]: TokenType.LeftSquare,
  [CH.rightSquare]: TokenType.RightSquare,
  [CH.colon]: TokenType.Colon,
  [CH.comma]: TokenType.Comma,
};

const isDigit = (b: number): boolean => b >= CH.zero && b <= CH.nine;
const isWhitespace = (b: number): boolean => b === CH.space || b === CH.tab || b === CH.lf || b === CH.cr;
const isStringByte = (b: number): boolean => b >= CH.space && b < CH.firstImpossibleUtf8;
const endsRecovery = (b: number): boolean =>
  (b < CH.space && b !== CH.tab) ||
  b >= CH.firstImpossibleUtf8 ||
  b === CH.leftCurly ||
  b === CH.rightCurly ||
  b === CH.leftSquare ||
  b === CH.rightSquare;

export class JsonStreamReader {
  private state = LexState.Start;
  private quote = 0;
  /** Pieces of the token being lexed that came in earlier chunks. */
  private partialToken: Buffer[] = [];
  private partialTokenBytes = 0;

  private tokens: Token[] = [];
  private messageBytes = 0;
  private braceDepth = 0;
  private bracketDepth = 0;
  /** After a limit error: dropping the rest of that message until its brackets balance. */
  private discardingOversizeMessage = false;

  constructor(
    private readonly emit: (item: JsonStreamItem) => void,
    private readonly limits: JsonStreamLimits = QEMU_JSON_LIMITS,
  ) {}

  /** Feeds the next bytes of the stream; complete messages are emitted synchronously. */
  feed(chunk: Buffer): void {
    let tokenStart = this.state === LexState.Start || this.state === LexState.Recovery ? -1 : 0;
    let i = 0;
    while (i < chunk.length) {
      const b = chunk[i];
      switch (this.state) {
        case LexState.Recovery:
          if (endsRecovery(b)) {
            this.state = LexState.Start;
            continue; // the resync character is lexed afresh
          }
          i++;
          continue;
        case LexState.Start: {
          if (isWhitespace(b)) {
            i++;
            continue;
          }
          const single = SINGLE_CHAR_TOKENS[b];
          if (single !== undefined) {
            this.onToken({ type: single }, 1);
            i++;
            continue;
          }
          tokenStart = i;
          if (b === CH.doubleQuote || b === CH.singleQuote) {
            this.quote = b;
            this.state = LexState.String;
          } else if (b === CH.zero) this.state = LexState.Zero;
          else if (b >= CH.one && b <= CH.nine) this.state = LexState.IntegerDigits;
          else if (b === CH.minus) this.state = LexState.Minus;
          else if (b >= CH.lowerA && b <= CH.lowerZ) this.state = LexState.Keyword;
          else {
            this.lexError(chunk, tokenStart, i);
            tokenStart = -1;
          }
          i++;
          continue;
        }
        case LexState.String:
          if (b === this.quote) {
            this.finishToken(chunk, tokenStart, i + 1, TokenType.String);
            tokenStart = -1;
          } else if (b === CH.backslash) this.state = LexState.StringEscape;
          else if (!isStringByte(b)) {
            this.lexError(chunk, tokenStart, i);
            tokenStart = -1;
          }
          i++;
          continue;
        case LexState.StringEscape:
          if (isStringByte(b)) this.state = LexState.String;
          else {
            this.lexError(chunk, tokenStart, i);
            tokenStart = -1;
          }
          i++;
          continue;
        default: {
          // Numbers and keywords: either the byte continues the token, or the token ends
          // before it (and the byte is lexed afresh), or the byte is an error.
          const next = this.numberOrKeywordTransition(b);
          if (next === 'end') {
            const type =
              this.state === LexState.Keyword
                ? TokenType.Keyword
                : this.state === LexState.Zero || this.state === LexState.IntegerDigits
                  ? TokenType.Integer
                  : TokenType.Float;
            this.finishToken(chunk, tokenStart, i, type);
            tokenStart = -1;
            continue;
          }
          if (next === 'error') {
            this.lexError(chunk, tokenStart, i);
            tokenStart = -1;
          } else this.state = next;
          i++;
          continue;
        }
      }
    }
    if (tokenStart >= 0) this.keepPartialToken(chunk.subarray(tokenStart));
  }

  private numberOrKeywordTransition(b: number): LexState | 'end' | 'error' {
    switch (this.state) {
      case LexState.Zero:
        if (b === CH.dot) return LexState.FractionStart;
        return isDigit(b) ? 'error' : 'end';
      case LexState.Minus:
        if (b === CH.zero) return LexState.Zero;
        return b >= CH.one && b <= CH.nine ? LexState.IntegerDigits : 'error';
      case LexState.IntegerDigits:
        if (isDigit(b)) return LexState.IntegerDigits;
        if (b === CH.dot) return LexState.FractionStart;
        if (b === CH.lowerE || b === CH.upperE) return LexState.ExponentStart;
        return 'end';
      case LexState.FractionStart:
        return isDigit(b) ? LexState.FractionDigits : 'error';
      case LexState.FractionDigits:
        if (isDigit(b)) return LexState.FractionDigits;
        if (b === CH.lowerE || b === CH.upperE) return LexState.ExponentStart;
        return 'end';
      case LexState.ExponentStart:
        if (b === CH.plus || b === CH.minus) return LexState.ExponentSign;
        return isDigit(b) ? LexState.ExponentDigits : 'error';
      case LexState.ExponentSign:
        return isDigit(b) ? LexState.ExponentDigits : 'error';
      case LexState.ExponentDigits:
        return isDigit(b) ? LexState.ExponentDigits : 'end';
      case LexState.Keyword:
        return b >= CH.lowerA && b <= CH.lowerZ ? LexState.Keyword : 'end';
      default:
        throw new Error(`JSON lexer reached state ${LexState[this.state]} with a number byte: a bug in json-stream.ts`);
    }
  }

  /** Holds on to the unfinished token at the end of a chunk, enforcing the size limit. */
  private keepPartialToken(piece: Buffer): void {
    if (this.discardingOversizeMessage) return; // its text will never be looked at
    this.partialToken.push(Buffer.from(piece)); // copy: the caller may reuse its buffer
    this.partialTokenBytes += piece.length;
    if (this.messageBytes + this.partialTokenBytes > this.limits.maxMessageBytes) {
      this.dropPartialToken();
      this.state = LexState.Recovery;
      this.overLimit('JSON token size limit exceeded');
    }
  }

  private dropPartialToken(): void {
    this.partialToken = [];
    this.partialTokenBytes = 0;
  }

  private tokenBytes(chunk: Buffer, start: number, end: number): Buffer {
    const tail = chunk.subarray(Math.max(start, 0), end);
    if (this.partialToken.length === 0) return tail;
    const whole = Buffer.concat([...this.partialToken, tail]);
    this.dropPartialToken();
    return whole;
  }

  /** The token so far plus the offending byte become a "stray" error, then recovery. */
  private lexError(chunk: Buffer, tokenStart: number, badByteIndex: number): void {
    const text = this.tokenBytes(chunk, tokenStart, badByteIndex + 1);
    this.state = LexState.Recovery;
    this.failMessage(`JSON parse error, stray '${strayText(text)}'`);
  }

  private finishToken(chunk: Buffer, start: number, end: number, type: TokenType): void {
    const text = this.tokenBytes(chunk, start, end);
    this.state = LexState.Start;
    const token: Token = { type };
    if (type === TokenType.String) {
      const decoded = decodeJsonString(text);
      if (typeof decoded === 'string') token.value = decoded;
      else token.decodeError = decoded.error;
    } else if (type === TokenType.Integer) token.value = integerValue(text.toString('latin1'));
    else if (type === TokenType.Float) token.value = Number(text.toString('latin1'));
    else token.value = text.toString('latin1');
    this.onToken(token, text.length);
  }

  /** The streamer: gathers tokens until the brackets balance, enforcing the limits. */
  private onToken(token: Token, size: number): void {
    switch (token.type) {
      case TokenType.LeftCurly:
        this.braceDepth++;
        break;
      case TokenType.RightCurly:
        this.braceDepth--;
        break;
      case TokenType.LeftSquare:
        this.bracketDepth++;
        break;
      case TokenType.RightSquare:
        this.bracketDepth--;
        break;
      default:
        break;
    }
    const messageOpen = this.braceDepth > 0 || this.bracketDepth > 0;
    const messageComplete = !messageOpen || this.braceDepth < 0 || this.bracketDepth < 0;
    if (this.discardingOversizeMessage) {
      if (messageComplete) this.resetMessage();
      return;
    }
    if (this.messageBytes + size > this.limits.maxMessageBytes) {
      this.overLimit('JSON token size limit exceeded');
      return;
    }
    if (this.braceDepth + this.bracketDepth > this.limits.maxNesting) {
      this.overLimit('JSON nesting depth limit exceeded');
      return;
    }
    this.tokens.push(token);
    this.messageBytes += size;
    if (!messageComplete) return;
    const tokens = this.tokens;
    this.resetMessage();
    this.emit(parseTokens(tokens));
  }

  /**
   * A message broke a limit: one error, then the rest of that message (up to where its
   * brackets balance) is dropped unparsed. QEMU 7.2 instead restarts at depth zero and
   * answers every leftover closer with its own error — thousands of answers to one bad
   * message; newer QEMU drops the rest as done here. A lexical error (e.g. a control
   * character, the resync the QMP spec recommends) ends the dropping early.
   */
  private overLimit(error: string): void {
    const [braces, brackets] = [this.braceDepth, this.bracketDepth];
    this.resetMessage();
    if (braces > 0 || brackets > 0) {
      this.discardingOversizeMessage = true;
      this.braceDepth = braces;
      this.bracketDepth = brackets;
    }
    this.emit({ error });
  }

  private failMessage(error: string): void {
    this.resetMessage();
    this.emit({ error });
  }

  private resetMessage(): void {
    this.tokens = [];
    this.messageBytes = 0;
    this.braceDepth = 0;
    this.bracketDepth = 0;
    this.discardingOversizeMessage = false;
  }
}

/** QEMU prints the token as a C string: it stops at a NUL; invalid UTF-8 shows as U+FFFD. */
function strayText(text: Buffer): string {
  const nul = text.indexOf(0);
  return (nul >= 0 ? text.subarray(0, nul) : text).toString('utf8');
}

/** Integers stay exact: number when safe, bigint within int64/uint64, else a double (as QEMU). */
function integerValue(text: string): number | bigint {
  const asNumber = Number(text);
  if (Number.isSafeInteger(asNumber)) return asNumber === 0 ? 0 : asNumber; // "-0" is integer 0
  const big = BigInt(text);
  if (big >= -(1n << 63n) && big < 1n << 64n) return big;
  return asNumber;
}

const SIMPLE_ESCAPES: Partial<Record<number, string>> = {
  0x22: '"',
  0x27: "'",
  0x5c: '\\',
  0x2f: '/',
  0x62: '\b',
  0x66: '\f',
  0x6e: '\n',
  0x72: '\r',
  0x74: '\t',
};

const INVALID_UTF8 = 'invalid UTF-8 sequence in string';

/** Decodes a lexed string token (quotes included) or says what QEMU would say is wrong. */
function decodeJsonString(token: Buffer): string | { error: string } {
  const body = token.subarray(1, token.length - 1);
  let plain = true;
  for (const b of body) {
    if (b >= 0x80 || b === CH.backslash) {
      plain = false;
      break;
    }
  }
  if (plain) return body.toString('latin1');

  const units: number[] = [];
  let i = 0;
  while (i < body.length) {
    const b = body[i];
    if (b !== CH.backslash) {
      const decoded = decodeUtf8Char(body, i);
      if (!decoded) return { error: INVALID_UTF8 };
      pushCodePoint(units, decoded.codePoint);
      i += decoded.length;
      continue;
    }
    const escape = body[i + 1];
    const simple = SIMPLE_ESCAPES[escape];
    if (simple !== undefined) {
      units.push(simple.charCodeAt(0));
      i += 2;
      continue;
    }
    if (escape !== 0x75 /* u */) return { error: 'invalid escape sequence in string' };
    const first = hexEscapeValue(body, i);
    if (first === undefined) return { error: invalidCharacter(body, i) };
    if (first >= 0xdc00 && first <= 0xdfff) return { error: invalidCharacter(body, i) };
    if (first >= 0xd800 && first <= 0xdbff) {
      const second = body[i + 6] === CH.backslash && body[i + 7] === 0x75 ? hexEscapeValue(body, i + 6) : undefined;
      if (second === undefined || second < 0xdc00 || second > 0xdfff) return { error: invalidCharacter(body, i) };
      units.push(first, second);
      i += 12;
      continue;
    }
    units.push(first);
    i += 6;
  }
  let out = '';
  for (let start = 0; start < units.length; start += 8192) {
    out += String.fromCharCode(...units.slice(start, start + 8192));
  }
  return out;
}

function invalidCharacter(body: Buffer, escapeStart: number): string {
  return `${body.subarray(escapeStart, escapeStart + 6).toString('latin1')} is not a valid Unicode character`;
}

function hexEscapeValue(body: Buffer, escapeStart: number): number | undefined {
  const hex = body.subarray(escapeStart + 2, escapeStart + 6).toString('latin1');
  return /^[0-9a-fA-F]{4}$/.test(hex) ? parseInt(hex, 16) : undefined;
}

function pushCodePoint(units: number[], codePoint: number): void {
  if (codePoint < 0x10000) units.push(codePoint);
  else {
    const offset = codePoint - 0x10000;
    units.push(0xd800 + (offset >> 10), 0xdc00 + (offset & 0x3ff));
  }
}

/**
 * Strict UTF-8 (no surrogates, no overlongs, nothing above U+10FFFF), except QEMU's
 * "modified UTF-8" NUL, C0 80, which it accepts.
 */
function decodeUtf8Char(bytes: Buffer, at: number): { codePoint: number; length: number } | undefined {
  const lead = bytes[at];
  if (lead < 0x80) return { codePoint: lead, length: 1 };
  if (lead === 0xc0 && bytes[at + 1] === 0x80) return { codePoint: 0, length: 2 };
  let length: number;
  let codePoint: number;
  let minimum: number;
  if (lead >= 0xc2 && lead <= 0xdf) [length, codePoint, minimum] = [2, lead & 0x1f, 0x80];
  else if (lead >= 0xe0 && lead <= 0xef) [length, codePoint, minimum] = [3, lead & 0x0f, 0x800];
  else if (lead >= 0xf0 && lead <= 0xf4) [length, codePoint, minimum] = [4, lead & 0x07, 0x10000];
  else return undefined;
  for (let k = 1; k < length; k++) {
    const continuation = bytes[at + k];
    if (continuation === undefined || (continuation & 0xc0) !== 0x80) return undefined;
    codePoint = (codePoint << 6) | (continuation & 0x3f);
  }
  if (codePoint < minimum || codePoint > 0x10ffff || (codePoint >= 0xd800 && codePoint <= 0xdfff)) return undefined;
  return { codePoint, length };
}

class JsonGrammarError extends Error {}

/** The parser: one complete message's tokens to a value; the first error found wins. */
function parseTokens(tokens: Token[]): JsonStreamItem {
  let next = 0;
  const fail = (what: string): never => {
    throw new JsonGrammarError(`JSON parse error, ${what}`);
  };
  const take = (): Token => tokens[next++] ?? fail('premature EOI');
  const peek = (): Token => tokens[next] ?? fail('premature EOI');

  const parseValue = (): QmpValue => {
    const token = peek();
    switch (token.type) {
      case TokenType.LeftCurly:
        return parseObject();
      case TokenType.LeftSquare:
        return parseArray();
      case TokenType.String:
        next++;
        if (token.decodeError !== undefined) fail(token.decodeError);
        return token.value as string;
      case TokenType.Integer:
      case TokenType.Float:
        next++;
        return token.value as number | bigint;
      case TokenType.Keyword:
        next++;
        if (token.value === 'true') return true;
        if (token.value === 'false') return false;
        if (token.value === 'null') return null;
        return fail(`invalid keyword '${String(token.value)}'`);
      default:
        return fail('expecting value');
    }
  };

  const parseObject = (): QmpValue => {
    take(); // {
    const object: Record<string, QmpValue> = {};
    if (peek().type === TokenType.RightCurly) {
      take();
      return object;
    }
    for (;;) {
      const key = parseValue();
      if (typeof key !== 'string') return fail('key is not a string in object');
      if (take().type !== TokenType.Colon) fail('missing : in object pair');
      const member = parseValue();
      if (Object.prototype.hasOwnProperty.call(object, key)) fail('duplicate key');
      // defineProperty: a key named "__proto__" must stay an ordinary member
      Object.defineProperty(object, key, { value: member, enumerable: true, writable: true, configurable: true });
      const separator = take();
      if (separator.type === TokenType.RightCurly) return object;
      if (separator.type !== TokenType.Comma) fail('expected separator in dict');
    }
  };

  const parseArray = (): QmpValue => {
    take(); // [
    const array: QmpValue[] = [];
    if (peek().type === TokenType.RightSquare) {
      take();
      return array;
    }
    for (;;) {
      array.push(parseValue());
      const separator = take();
      if (separator.type === TokenType.RightSquare) return array;
      if (separator.type !== TokenType.Comma) fail('expected separator in list');
    }
  };

  try {
    return { value: parseValue() };
  } catch (err) {
    if (err instanceof JsonGrammarError) return { error: err.message };
    throw err;
  }
}

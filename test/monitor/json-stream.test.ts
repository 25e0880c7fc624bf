/** The JSON reader and writer on their own: chunking must never change the outcome. */
import { formatCDouble17g, formatQmpJson } from '../../src/hypervisor/monitor/json-format';
import { JsonStreamReader, type JsonStreamItem } from '../../src/hypervisor/monitor/json-stream';

const STREAM = Buffer.from(
  '{"execute":"a","id":[1,2.5,"x\\u00e9\\ud83d\\ude00"]}{"execute":"b"}\n' +
    '@\n}\n[1 2]\n{"a":"\xc3\xa9\\n"}  42 \'sq"\'\n{"unterminated":"\n' +
    '{"k":{"l":[true,false,null,-0,12345678901234567890,1e400]}}\n',
  'latin1',
);

function readAll(chunks: Buffer[], limits = { maxMessageBytes: 1 << 20, maxNesting: 1024 }): JsonStreamItem[] {
  const items: JsonStreamItem[] = [];
  const reader = new JsonStreamReader((item) => items.push(item), limits);
  chunks.forEach((chunk) => reader.feed(chunk));
  return items;
}

describe('JsonStreamReader', () => {
  const whole = readAll([STREAM]);

  test('reads values and errors as QEMU does', () => {
    expect(whole).toEqual([
      { value: { execute: 'a', id: [1, 2.5, 'x\u00e9\u{1f600}'] } },
      { value: { execute: 'b' } },
      { error: "JSON parse error, stray '@'" },
      { error: 'JSON parse error, expecting value' },
      { error: 'JSON parse error, expected separator in list' },
      { value: { a: '\u00e9\n' } },
      { value: 42 },
      { value: 'sq"' },
      { error: 'JSON parse error, stray \'"\n\'' },
      { value: { k: { l: [true, false, null, 0, 12345678901234567890n, Infinity] } } },
    ]);
  });

  test('the same stream split at every byte gives the same items', () => {
    const bytes = [...STREAM].map((b) => Buffer.from([b]));
    expect(readAll(bytes)).toEqual(whole);
    for (let cut = 1; cut < STREAM.length; cut += 7) {
      expect(readAll([STREAM.subarray(0, cut), STREAM.subarray(cut)])).toEqual(whole);
    }
  });

  test('limits: size and nesting give one error each and the reader carries on', () => {
    const limits = { maxMessageBytes: 64, maxNesting: 4 };
    const input = Buffer.from('{"a":"' + 'x'.repeat(100) + '"}\n[[[[[1]]]]]\n{"ok":1}');
    expect(readAll([input], limits)).toEqual([
      { error: 'JSON token size limit exceeded' },
      { error: 'JSON nesting depth limit exceeded' },
      { value: { ok: 1 } },
    ]);
    const split = [...input].map((b) => Buffer.from([b]));
    expect(readAll(split, limits)).toEqual(readAll([input], limits));
  });

  test('a member named __proto__ stays an ordinary member', () => {
    const [item] = readAll([Buffer.from('{"__proto__":{"polluted":true}}')]);
    expect(Object.keys((item as { value: object }).value)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('QEMU-style JSON output', () => {
  test("numbers like C's %.17g, integers exact", () => {
    const cases: Array<[number, string]> = [
      [0.1, '0.10000000000000001'],
      [1e21, '1e+21'],
      [1e-7, '9.9999999999999995e-08'],
      [3.14, '3.1400000000000001'],
      [1500, '1500'],
      [-0, '-0'],
      [1e100, '1.0000000000000000e+100'.replace(/\.?0+e/, 'e')],
      [Infinity, 'inf'],
    ];
    for (const [value, text] of cases) expect(formatCDouble17g(value)).toBe(text);
    expect(formatQmpJson([1, 12345678901234567890n, 2 ** 53 + 2])).toBe('[1, 12345678901234567890, 9007199254740994]');
  });

  test('separators, escapes and empty containers', () => {
    expect(formatQmpJson({ a: [], b: {}, c: 'é/"\\\u0001\u{1f600}', d: undefined, e: null })).toBe(
      '{"a": [], "b": {}, "c": "\\u00E9/\\"\\\\\\u0001\\uD83D\\uDE00", "e": null}',
    );
  });
});

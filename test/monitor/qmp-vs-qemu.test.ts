/**
 * The same scripted QMP sessions against a real QEMU 7.2 (`-machine none`) and against our
 * server; the answers must be identical byte for byte once version numbers, the package
 * string and timestamps are set aside. This is what "a client written for QEMU works
 * unchanged" means in practice.
 */
import { QmpServer } from '../../src/hypervisor/monitor';
import {
  normalizeQmpLine,
  qemuAvailable,
  RawQmpConnection,
  ReferenceQemu,
  registerStandInVmCommands,
  tempSocketPath,
  timestampIsNow,
} from './qmp-test-helpers';

interface Step {
  note: string;
  /** Written one after another, a little apart, so split input really arrives split. */
  send: string[];
  /** Lines the server answers with. */
  expect: number;
}

const cmd = (text: string): string => text + '\n';

/** Before and during negotiation. */
const NEGOTIATION_SCRIPT: Step[] = [
  { note: 'command before negotiation', send: [cmd('{"execute":"query-status","id":"early"}')], expect: 1 },
  { note: 'missing execute before negotiation', send: [cmd('{"id":1}')], expect: 1 },
  { note: 'unknown command before negotiation', send: [cmd('{"execute":"nosuch"}')], expect: 1 },
  { note: 'enable of wrong type', send: [cmd('{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}')], expect: 1 },
  { note: 'unknown capability', send: [cmd('{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}')], expect: 1 },
  { note: 'unexpected argument', send: [cmd('{"execute":"qmp_capabilities","arguments":{"x":1}}')], expect: 1 },
  { note: 'negotiation, id of any JSON type', send: [cmd('{"execute":"qmp_capabilities","id":{"a":[1,"x",null,true,1.5]}}')], expect: 1 },
  { note: 'negotiation again', send: [cmd('{"execute":"qmp_capabilities"}')], expect: 1 },
];

/** After negotiation: protocol errors, argument errors, JSON errors, id echo, events. */
const COMMAND_SCRIPT: Step[] = [
  { note: 'unknown command', send: [cmd('{"execute":"nosuch","id":{"a":[1,2]}}')], expect: 1 },
  { note: 'bad JSON', send: [cmd('{bad json}')], expect: 1 },
  { note: 'array, number, string, true', send: ['[1,2]\n', '42 ', '"hello"\n', 'true\n'], expect: 4 },
  { note: 'lacks execute, with id', send: [cmd('{"id":5}')], expect: 1 },
  { note: 'execute not a string', send: [cmd('{"execute":5}')], expect: 1 },
  { note: 'arguments not an object', send: [cmd('{"execute":"query-status","arguments":[1]}')], expect: 1 },
  { note: 'arguments null', send: [cmd('{"execute":"query-status","arguments":null}')], expect: 1 },
  { note: 'unknown top-level member', send: [cmd('{"execute":"query-status","foo":1}')], expect: 1 },
  { note: 'exec-oob when oob is off', send: [cmd('{"exec-oob":"query-status"}')], expect: 1 },
  { note: 'argument to a command without any', send: [cmd('{"execute":"query-status","arguments":{"x":1}}')], expect: 1 },
  { note: 'empty arguments', send: [cmd('{"execute":"query-status","arguments":{}}')], expect: 1 },
  { note: 'getfd: missing argument', send: [cmd('{"execute":"getfd"}')], expect: 1 },
  { note: 'getfd: wrong types', send: ['{"execute":"getfd","arguments":{"fdname":5}}\n', '{"execute":"getfd","arguments":{"fdname":null}}\n'], expect: 2 },
  { note: 'getfd: unexpected argument', send: [cmd('{"execute":"getfd","arguments":{"fdname":"x","zz":1}}')], expect: 1 },
  { note: 'getfd: no fd passed', send: [cmd('{"execute":"getfd","arguments":{"fdname":"x"},"id":"g"}')], expect: 1 },
  { note: 'closefd: unknown name', send: [cmd('{"execute":"closefd","arguments":{"fdname":"x"}}')], expect: 1 },
  { note: 'query-version, id null', send: [cmd('{"execute":"query-version","id":null}')], expect: 1 },
  { note: 'two commands in one write; STOP/RESUME events', send: ['{"execute":"stop","id":"s"}{"execute":"cont"}'], expect: 4 },
  { note: 'one command split over writes', send: ['{"execute":"query-', 'status","id":"sp"}'], expect: 1 },
  { note: 'whitespace of every kind', send: ['\r\n\t  {"execute":\n"query-status"}  \t', '\n\n'], expect: 1 },
  { note: 'ids: big integers, floats, escapes, non-ASCII', send: [cmd('{"execute":"query-status","id":[12345678901234567890,-9223372036854775808,-0,1.0,0.1,1e21,1e-7,-0.0,100000000000000000000000,"a/b\\u007f\\u0001\\b\\f\\n\\r\\t\\"\\\\ \\u0000h\\u00e9\\ud83d\\ude00"]}')], expect: 1 },
  { note: 'raw UTF-8 and a BOM in a string', send: [cmd('{"execute":"query-status","id":"\x7f\xc3\xa9\xef\xbb\xbfx"}')], expect: 1 },
  { note: 'single-quoted string', send: [cmd("{'execute':'query-status','id':'a\"b\\'c'}")], expect: 1 },
  { note: 'stray characters', send: ['@\n', '\x00{"execute":"query-status"}\n', '\xff\n'], expect: 4 },
  { note: 'stray closers', send: ['}\n', ']\n'], expect: 2 },
  { note: 'grammar errors', send: ['{"execute":"query-status" "id":1}\n', '{"execute":"query-status",}\n', '{1:1}\n', '{"a" 1}\n', '[1 2]\n', '{"a":1]\n', '{"a":1}}\n'], expect: 8 },
  { note: 'keyword errors', send: [cmd('{"execute":"query-status","id":nul}'), cmd('{"execute":"query-status","id":True}')], expect: 3 },
  { note: 'string errors', send: [cmd('{"execute":"query-\\qstatus"}'), cmd('{"execute":"query-status","id":"\\ud800"}'), cmd('{"execute":"query-status","id":"\\u12g4"}'), cmd('{"execute":"query-status","id":"a\xc3("}')], expect: 4 },
  { note: 'duplicate key', send: [cmd('{"execute":"stop","execute":"query-status"}')], expect: 1 },
  { note: 'number errors', send: [cmd('{"execute":"query-status","id":01}'), cmd('{"execute":"query-status","id":0e5}'), cmd('{"execute":"query-status","id":-x}')], expect: 5 },
  { note: 'control character inside a string', send: [cmd('{"execute":"query-status\x01"}')], expect: 2 },
  { note: 'newline inside a string', send: ['{"execute":"query-status\n', cmd('{"execute":"query-status"}')], expect: 2 },
  { note: 'unterminated object swallows the next line until closed', send: ['{"execute":"query-status"\n', '{"execute":"nosuch"}\n', '}\n'], expect: 1 },
  { note: 'unterminated object abandoned with ESC, as the QMP spec advises', send: ['{"execute":"query-status"\n', '\x1b\n', cmd('{"execute":"query-status","id":"resync"}')], expect: 2 },
  { note: 'percent (interpolation is not for the wire)', send: [cmd('{"execute":"query-status","id":%d}')], expect: 2 },
];

const OOB_SCRIPT: Step[] = [
  { note: 'negotiate oob', send: [cmd('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')], expect: 1 },
  { note: 'exec-oob of a command without oob support', send: [cmd('{"exec-oob":"query-status","id":"o1"}')], expect: 1 },
  { note: 'execute and exec-oob together', send: [cmd('{"execute":"query-status","exec-oob":"query-status","id":1}')], expect: 1 },
  { note: 'exec-oob not a string', send: [cmd('{"exec-oob":5}')], expect: 1 },
  { note: 'exec-oob of an unknown command', send: [cmd('{"exec-oob":"nosuch"}')], expect: 1 },
];

/**
 * Argument checking, on commands whose schemas are declared here as QEMU 7.2's qapi/*.json
 * declares them (only the members the script touches). Input QEMU accepts is harmless on
 * a machine with nothing in it; the stand-ins then answer as QEMU does, `{}`.
 */
const ARGUMENT_SCRIPT: Step[] = [
  { note: 'array of structs: missing member', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle"}]}}')], expect: 1 },
  { note: 'enum inside a list element', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"nope","state":true}]}}')], expect: 1 },
  { note: 'object where an array belongs', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":{}}}')], expect: 1 },
  { note: 'scalar where a struct belongs', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[1]}}')], expect: 1 },
  { note: 'bool given a number', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":1}]}}')], expect: 1 },
  { note: 'unexpected member in a list element', send: [cmd('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":true,"x":0}]}}')], expect: 1 },
  { note: 'size given a string, a fraction, a negative, 2^64', send: ['{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":"1"}}\n', '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1.5}}\n', '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":-1}}\n', '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":18446744073709551616}}\n'], expect: 4 },
  { note: 'uint8 out of range, a string, a fraction', send: ['{"execute":"migrate-set-parameters","arguments":{"multifd-channels":300}}\n', '{"execute":"migrate-set-parameters","arguments":{"multifd-channels":"x"}}\n', '{"execute":"migrate-set-parameters","arguments":{"multifd-channels":1.5}}\n'], expect: 3 },
  { note: 'uint32 out of range', send: [cmd('{"execute":"migrate-set-parameters","arguments":{"x-checkpoint-delay":5000000000}}')], expect: 1 },
  { note: 'bool given a string', send: [cmd('{"execute":"migrate-set-parameters","arguments":{"block-incremental":"yes"}}')], expect: 1 },
  { note: 'int given a string, a fraction, 1e30, 2^64-1', send: ['{"execute":"human-monitor-command","arguments":{"command-line":"x","cpu-index":"x"}}\n', '{"execute":"human-monitor-command","arguments":{"command-line":"x","cpu-index":1.5}}\n', '{"execute":"human-monitor-command","arguments":{"command-line":"x","cpu-index":1e30}}\n', '{"execute":"human-monitor-command","arguments":{"command-line":"x","cpu-index":18446744073709551615}}\n'], expect: 4 },
  { note: 'missing required argument', send: [cmd('{"execute":"human-monitor-command","arguments":{"cpu-index":0}}')], expect: 1 },
  { note: 'enum, nested struct member errors', send: ['{"execute":"query-cpu-model-expansion","arguments":{"type":"bogus","model":{"name":"max"}}}\n', '{"execute":"query-cpu-model-expansion","arguments":{"type":"static","model":{"name":5}}}\n', '{"execute":"query-cpu-model-expansion","arguments":{"type":"static","model":{}}}\n', '{"execute":"query-cpu-model-expansion","arguments":{"type":"static","model":{"name":"max","zz":1}}}\n', '{"execute":"query-cpu-model-expansion","arguments":{"type":5,"model":{"name":"max"}}}\n'], expect: 5 },
];

/** Stand-ins declaring the schemas ARGUMENT_SCRIPT exercises. */
function registerArgumentStandIns(server: QmpServer): void {
  const acceptQuietly = (): Record<string, never> => ({});
  server.registerCommand('migrate-set-capabilities', {
    args: {
      capabilities: {
        array: { struct: { capability: { enum: ['xbzrle', 'rdma-pin-all', 'auto-converge', 'postcopy-ram'] }, state: 'bool' } },
      },
    },
    handler: acceptQuietly,
  });
  server.registerCommand('migrate-set-parameters', {
    args: { '*max-bandwidth': 'size', '*multifd-channels': 'uint8', '*x-checkpoint-delay': 'uint32', '*block-incremental': 'bool' },
    handler: acceptQuietly,
  });
  server.registerCommand('human-monitor-command', {
    args: { 'command-line': 'str', '*cpu-index': 'int' },
    handler: acceptQuietly,
  });
  server.registerCommand('query-cpu-model-expansion', {
    args: { type: { enum: ['static', 'full'] }, model: { struct: { name: 'str', '*props': 'any' } } },
    handler: acceptQuietly,
  });
}

async function runScript(socketPath: string, script: Step[], negotiateFirst: boolean): Promise<string[][]> {
  const connection = await RawQmpConnection.open(socketPath);
  try {
    const transcript: string[][] = [await connection.read(1)];
    if (negotiateFirst) {
      connection.write('{"execute":"qmp_capabilities"}\n');
      transcript.push(await connection.read(1));
    }
    for (const step of script) {
      for (const [index, piece] of step.send.entries()) {
        if (index > 0) await new Promise((r) => setTimeout(r, 15));
        connection.write(piece);
      }
      const lines = await connection.read(step.expect).catch((err: Error) => {
        throw new Error(`step "${step.note}": ${err.message}`);
      });
      transcript.push(lines);
    }
    // Nothing extra may follow: one more command, and its answer must be the very next line.
    connection.write('{"execute":"query-version","id":"end"}\n');
    transcript.push(await connection.read(1));
    return transcript;
  } finally {
    connection.close();
  }
}

function labelled(script: Step[], negotiateFirst: boolean, transcript: string[][]): Array<{ step: string; lines: string[] }> {
  const notes = ['greeting', ...(negotiateFirst ? ['negotiation'] : []), ...script.map((s) => s.note), 'final query-version'];
  return transcript.map((lines, i) => ({ step: notes[i], lines: lines.map(normalizeQmpLine) }));
}

const haveQemu = qemuAvailable();

describe('QMP answers match QEMU 7.2 byte for byte', () => {
  let qemu: ReferenceQemu | undefined;
  let server: QmpServer;
  const ourSocket = tempSocketPath('ours');

  beforeAll(async () => {
    server = new QmpServer();
    registerStandInVmCommands(server);
    registerArgumentStandIns(server);
    await server.listen(ourSocket);
    if (haveQemu) qemu = await ReferenceQemu.start();
  });

  afterAll(async () => {
    await server.close();
    await qemu?.stop();
  });

  const scripts: Array<[string, Step[], boolean]> = [
    ['negotiation', NEGOTIATION_SCRIPT, false],
    ['commands, errors, ids and events', COMMAND_SCRIPT, true],
    ['out-of-band capability', OOB_SCRIPT, false],
    ['argument checking', ARGUMENT_SCRIPT, true],
  ];

  test.each(scripts)('%s', async (_name, script, negotiateFirst) => {
    if (!qemu) {
      console.warn(`${_name}: ${'qemu-system-x86_64'} is not installed; comparison with QEMU skipped`);
      return;
    }
    const reference = await runScript(qemu.socketPath, script, negotiateFirst);
    const ours = await runScript(ourSocket, script, negotiateFirst);
    expect(labelled(script, negotiateFirst, ours)).toEqual(labelled(script, negotiateFirst, reference));
    for (const line of ours.flat()) {
      expect(line.endsWith('\r\n')).toBe(true);
      if (line.includes('"timestamp"')) expect(timestampIsNow(line)).toBe(true);
    }
  });

  test('greeting and query-version report the QMP dialect and Baton as package', async () => {
    const connection = await RawQmpConnection.open(ourSocket);
    const [greeting] = await connection.read(1);
    connection.write('{"execute":"qmp_capabilities"}{"execute":"query-version"}');
    const [, version] = await connection.read(2);
    connection.close();
    expect(JSON.parse(greeting)).toEqual({
      QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: expect.stringMatching(/^baton-hv \d+\.\d+\.\d+/) }, capabilities: ['oob'] },
    });
    expect(JSON.parse(version).return).toEqual(JSON.parse(greeting).QMP.version);
  });

  test('events reach only negotiated clients, on both servers', async () => {
    if (!qemu) {
      console.warn('qemu-system-x86_64 is not installed; comparison with QEMU skipped');
      return;
    }
    const session = async (driverSocket: string, watcherSocket: string): Promise<string[]> => {
      const driver = await RawQmpConnection.open(driverSocket);
      const watcher = await RawQmpConnection.open(watcherSocket);
      try {
        await driver.read(1);
        await watcher.read(1);
        driver.write('{"execute":"qmp_capabilities"}\n');
        await driver.read(1);
        driver.write('{"execute":"stop"}\n');
        await driver.read(2); // STOP, return
        // The un-negotiated watcher got no STOP: its next line is the negotiation answer.
        watcher.write('{"execute":"qmp_capabilities","id":"w"}\n');
        const afterNegotiation = await watcher.read(1);
        driver.write('{"execute":"cont"}\n');
        await driver.read(2);
        const resume = await watcher.read(1);
        return [...afterNegotiation, ...resume].map(normalizeQmpLine);
      } finally {
        driver.close();
        watcher.close();
      }
    };
    // QEMU serves one client per monitor, so its two clients use its two monitors.
    const reference = await session(qemu.secondSocketPath, qemu.socketPath);
    const ours = await session(ourSocket, ourSocket);
    expect(ours).toEqual(reference);
    expect(ours).toEqual(['{"return": {}, "id": "w"}\r\n', '{"timestamp": {TIME}, "event": "RESUME"}\r\n']);
  });

  test('nesting deeper than 1024: same first error as QEMU, then the connection still works', async () => {
    if (!qemu) {
      console.warn('qemu-system-x86_64 is not installed; comparison with QEMU skipped');
      return;
    }
    const deep = '{"execute":"query-status","id":' + '['.repeat(1024) + ']'.repeat(1024) + '}\n';
    const answers = async (socketPath: string): Promise<{ first: string; last: string; count: number }> => {
      const connection = await RawQmpConnection.open(socketPath);
      try {
        await connection.read(1);
        connection.write('{"execute":"qmp_capabilities"}\n');
        await connection.read(1);
        connection.write(deep);
        connection.write('{"execute":"query-version","id":"after"}\n');
        const lines: string[] = [];
        for (;;) {
          const [line] = await connection.read(1);
          lines.push(line);
          if (line.includes('"id": "after"')) break;
        }
        return { first: lines[0], last: normalizeQmpLine(lines[lines.length - 1]), count: lines.length };
      } finally {
        connection.close();
      }
    };
    const reference = await answers(qemu.socketPath);
    const ours = await answers(ourSocket);
    expect(ours.first).toBe(reference.first);
    expect(ours.first).toBe('{"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}}\r\n');
    expect(ours.last).toBe(reference.last);
    // QEMU 7.2 answers each of the 1025 leftover closers with its own error; we drop them.
    expect(reference.count).toBe(1 + 1025 + 1);
    expect(ours.count).toBe(2);
  });
});

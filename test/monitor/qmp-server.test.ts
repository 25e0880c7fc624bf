/**
 * Our server on its own: the socket file, several clients, ordering, hostile input,
 * clients that vanish, events, handler errors, fds attached to commands.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { QmpError, QmpServer, type MonitorConnection, type MonitorConnectionHandlers, type MonitorTransport } from '../../src/hypervisor/monitor';
import { RawQmpConnection, tempSocketPath } from './qmp-test-helpers';

const negotiated = async (socketPath: string): Promise<RawQmpConnection> => {
  const connection = await RawQmpConnection.open(socketPath);
  await connection.read(1);
  connection.write('{"execute":"qmp_capabilities"}\n');
  await connection.read(1);
  return connection;
};

/** Reads lines until the answer carrying `id` arrives; returns every line read. */
async function readUntilId(connection: RawQmpConnection, id: string): Promise<string[]> {
  const lines: string[] = [];
  for (;;) {
    const [line] = await connection.read(1);
    lines.push(line);
    if (line.includes(`"id": "${id}"`)) return lines;
  }
}

describe('QMP server', () => {
  let server: QmpServer;
  let socketPath: string;
  const commandErrors: string[] = [];
  let releaseSlow: (() => void) | undefined;

  beforeEach(async () => {
    socketPath = tempSocketPath('srv');
    commandErrors.length = 0;
    server = new QmpServer({ onCommandError: (info) => commandErrors.push(`${info.command}: ${info.error.desc}`) });
    server.registerCommand('sleep', {
      args: { ms: 'int' },
      handler: async (args) => {
        await new Promise((r) => setTimeout(r, args.ms as number));
        return { slept: args.ms };
      },
    });
    server.registerCommand('slow', {
      handler: () => new Promise<Record<string, never>>((resolve) => (releaseSlow = () => resolve({}))),
    });
    server.registerCommand('ping', { allowOob: true, handler: () => ({ pong: true }) });
    server.registerCommand('explode', {
      handler: () => {
        throw new Error('the device model fell over');
      },
    });
    server.registerCommand('find-device', {
      args: { id: 'str' },
      handler: (args) => {
        throw new QmpError('DeviceNotFound', `Device '${String(args.id)}' not found`);
      },
    });
    await server.listen(socketPath);
  });

  afterEach(async () => {
    releaseSlow?.();
    await server.close();
  });

  test('the socket is mode 0600 and close() removes it', async () => {
    expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600);
    await server.close();
    expect(fs.existsSync(socketPath)).toBe(false);
  });

  test('a stale socket file is replaced; a live one or a non-socket is refused', async () => {
    const second = new QmpServer();
    await expect(second.listen(socketPath)).rejects.toMatchObject({ code: 'MONITOR_SOCKET_IN_USE' });
    await server.close();
    // Leave a socket file nobody listens on, as a killed hypervisor would: a process
    // that binds and exits without unlinking.
    const bound = spawnSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socketPath]);
    fs.writeFileSync(socketPath + '.txt', 'not a socket');
    try {
      if (bound.status === 0 && fs.lstatSync(socketPath).isSocket()) {
        await second.listen(socketPath);
        expect(fs.statSync(socketPath).mode & 0o777).toBe(0o600);
        const client = await RawQmpConnection.open(socketPath);
        expect((await client.read(1))[0]).toMatch(/^\{"QMP": /);
        client.close();
        await second.close();
      } else {
        console.warn('python3 could not leave a stale socket behind; stale-socket replacement not exercised');
      }
      await expect(new QmpServer().listen(socketPath + '.txt')).rejects.toMatchObject({ code: 'MONITOR_PATH_NOT_SOCKET' });
    } finally {
      fs.rmSync(socketPath + '.txt', { force: true });
      await second.close();
    }
  });

  test('several clients, each with its own negotiation state', async () => {
    const a = await negotiated(socketPath);
    const b = await RawQmpConnection.open(socketPath);
    await b.read(1);
    const others = await Promise.all([1, 2, 3, 4].map(() => negotiated(socketPath)));
    expect(server.clientCount).toBe(6);
    b.write('{"execute":"ping","id":"b"}\n');
    a.write('{"execute":"ping","id":"a"}\n');
    expect(await b.read(1)).toEqual([
      '{"id": "b", "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}\r\n',
    ]);
    expect(await a.read(1)).toEqual(['{"return": {"pong": true}, "id": "a"}\r\n']);
    await Promise.all(
      others.map(async (client, i) => {
        client.write(`{"execute":"sleep","arguments":{"ms":${10 * i}},"id":"c${i}"}\n`);
        expect(await client.read(1)).toEqual([`{"return": {"slept": ${10 * i}}, "id": "c${i}"}\r\n`]);
      }),
    );
    [a, b, ...others].forEach((c) => c.close());
  });

  test('answers come in request order even when handlers finish out of order', async () => {
    const client = await negotiated(socketPath);
    client.write(
      '{"execute":"sleep","arguments":{"ms":80},"id":1}{"execute":"sleep","arguments":{"ms":0},"id":2}' +
        '{"execute":"nosuch","id":3}{"execute":"sleep","arguments":{"ms":20},"id":4}',
    );
    const ids = (await client.read(4)).map((line) => JSON.parse(line).id);
    expect(ids).toEqual([1, 2, 3, 4]);
    client.close();
  });

  test('exec-oob jumps the queue once oob is enabled', async () => {
    const client = await RawQmpConnection.open(socketPath);
    await client.read(1);
    client.write('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}\n');
    await client.read(1);
    client.write('{"execute":"slow","id":"slow"}\n{"exec-oob":"ping","id":"oob"}\n');
    expect(await client.read(1)).toEqual(['{"return": {"pong": true}, "id": "oob"}\r\n']);
    releaseSlow?.();
    expect(await client.read(1)).toEqual(['{"return": {}, "id": "slow"}\r\n']);
    client.close();
  });

  test('events: timestamp, name, data; every negotiated client gets them', async () => {
    const a = await negotiated(socketPath);
    const b = await negotiated(socketPath);
    server.emitEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    for (const client of [a, b]) {
      const [line] = await client.read(1);
      expect(line).toMatch(
        /^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "SHUTDOWN", "data": \{"guest": false, "reason": "host-qmp-quit"\}\}\r\n$/,
      );
      client.close();
    }
  });

  test('held events wait, keep the time they happened and their order, and go out on release', async () => {
    const client = await negotiated(socketPath);
    const release = server.holdEvents();
    server.emitEvent('STOP');
    await new Promise((r) => setTimeout(r, 30));
    server.emitEvent('RESUME');
    // Nothing reached the client while held: a command's answer comes first.
    client.write('{"execute":"ping","id":"while-held"}\n');
    expect(await client.read(1)).toEqual(['{"return": {"pong": true}, "id": "while-held"}\r\n']);
    release();
    release(); // idempotent
    const events = (await client.read(2)).map((line) => JSON.parse(line));
    expect(events.map((e) => e.event)).toEqual(['STOP', 'RESUME']);
    const us = (e: { timestamp: { seconds: number; microseconds: number } }) => e.timestamp.seconds * 1e6 + e.timestamp.microseconds;
    expect(us(events[1]) - us(events[0])).toBeGreaterThanOrEqual(25_000);
    server.emitEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    expect(JSON.parse((await client.read(1))[0]).event).toBe('SHUTDOWN');
    client.close();
  });

  test('handler failures: QmpError keeps its class, anything else becomes GenericError and is reported', async () => {
    const client = await negotiated(socketPath);
    client.write('{"execute":"explode","id":1}{"execute":"find-device","arguments":{"id":"net0"},"id":2}');
    expect(await client.read(2)).toEqual([
      '{"id": 1, "error": {"class": "GenericError", "desc": "the device model fell over"}}\r\n',
      '{"id": 2, "error": {"class": "DeviceNotFound", "desc": "Device \'net0\' not found"}}\r\n',
    ]);
    expect(commandErrors).toEqual(['explode: the device model fell over', "find-device: Device 'net0' not found"]);
    client.close();
  });

  test('an oversized message gets one error and the connection stays usable', async () => {
    const client = await negotiated(socketPath);
    const huge = '{"execute":"sleep","arguments":{"ms":"' + 'x'.repeat(2 << 20) + '"}}\n';
    client.write(huge);
    client.write('{"execute":"ping","id":"after-huge"}\n');
    expect(await readUntilId(client, 'after-huge')).toEqual([
      '{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}\r\n',
      '{"return": {"pong": true}, "id": "after-huge"}\r\n',
    ]);
    client.close();
  });

  test('unterminated input: one error at the limit, then ESC resynchronises', async () => {
    const client = await negotiated(socketPath);
    client.write('{"execute":"sleep","arguments":{"ms":[' + '1,'.repeat(600_000));
    expect(await client.read(1)).toEqual(['{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}\r\n']);
    client.write('\x1b\n{"execute":"ping","id":"resynced"}\n');
    expect(await readUntilId(client, 'resynced')).toEqual([
      '{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\u001B\'"}}\r\n',
      '{"return": {"pong": true}, "id": "resynced"}\r\n',
    ]);
    client.close();
  });

  test('random garbage does not hurt the server or other clients', async () => {
    const bystander = await negotiated(socketPath);
    const vandal = await negotiated(socketPath);
    let seed = 12345;
    const garbage = Buffer.alloc(64 * 1024);
    for (let i = 0; i < garbage.length; i++) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      garbage[i] = seed >> 16;
    }
    vandal.write(garbage);
    vandal.write('\x1b\n{"execute":"ping","id":"vandal"}\n');
    const answers = await readUntilId(vandal, 'vandal');
    expect(answers.every((line) => line.startsWith('{"error": ') || line.includes('"id": "vandal"'))).toBe(true);
    bystander.write('{"execute":"ping","id":"bystander"}\n');
    expect(await bystander.read(1)).toEqual(['{"return": {"pong": true}, "id": "bystander"}\r\n']);
    vandal.close();
    bystander.close();
  });

  test('a client disconnecting mid-command or mid-message is harmless', async () => {
    const quitter = await negotiated(socketPath);
    quitter.write('{"execute":"slow","id":"never-read"}\n{"execute":"ping"');
    await new Promise((r) => setTimeout(r, 50));
    quitter.close();
    for (let i = 0; i < 100 && server.clientCount > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.clientCount).toBe(0);
    releaseSlow?.(); // the handler finishes with nobody to answer
    await new Promise((r) => setTimeout(r, 20));
    const next = await negotiated(socketPath);
    next.write('{"execute":"ping","id":"still-here"}\n');
    expect(await next.read(1)).toEqual(['{"return": {"pong": true}, "id": "still-here"}\r\n']);
    next.close();
  });

  test('close() ends every client connection', async () => {
    const a = await negotiated(socketPath);
    const b = await negotiated(socketPath);
    await server.close();
    for (let i = 0; i < 100 && !(a.closed && b.closed); i++) await new Promise((r) => setTimeout(r, 10));
    expect([a.closed, b.closed]).toEqual([true, true]);
  });
});

/**
 * A transport that hands the server bytes and fds directly, as the native recvmsg transport
 * will: it shows getfd, ctx.fds and the closing of unclaimed fds working with real fds.
 */
class DirectConnection implements MonitorConnection {
  readonly description = 'direct';
  readonly output: string[] = [];
  handlers?: MonitorConnectionHandlers;
  start(handlers: MonitorConnectionHandlers): void {
    this.handlers = handlers;
  }
  write(data: Buffer, done?: () => void): void {
    this.output.push(data.toString('latin1'));
    done?.();
  }
  pendingWriteBytes(): number {
    return 0;
  }
  close(): void {
    this.handlers?.onClose();
  }
  destroy(): void {
    this.handlers?.onClose();
  }
}

class DirectTransport implements MonitorTransport {
  accept?: (connection: MonitorConnection) => void;
  async listen(_path: string, onConnection: (connection: MonitorConnection) => void): Promise<void> {
    this.accept = onConnection;
  }
  async close(): Promise<void> {}
}

const fdIsOpen = (fd: number): boolean => {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};

describe('fds passed with commands (SCM_RIGHTS path)', () => {
  test('getfd names the fd, handlers take it, unclaimed fds and the table are closed', async () => {
    const transport = new DirectTransport();
    const server = new QmpServer({ transport });
    let taken: number | undefined;
    server.registerCommand('use-fd', {
      args: { fdname: 'str' },
      handler: (args, ctx) => {
        taken = ctx.fds.take(args.fdname as string);
        return {};
      },
    });
    await server.listen('unused');
    const connection = new DirectConnection();
    transport.accept?.(connection);
    const settle = () => new Promise((r) => setTimeout(r, 20));
    const send = async (text: string, fds: number[] = []) => {
      connection.handlers?.onData(Buffer.from(text), fds);
      await settle();
    };
    const [kept, stray, named, orphan] = [0, 1, 2, 3].map(() => fs.openSync('/dev/null', 'r'));
    await send('{"execute":"qmp_capabilities"}');
    await send('{"execute":"getfd","arguments":{"fdname":"tap0"}}', [kept, stray]);
    expect(connection.output.slice(-1)).toEqual(['{"return": {}}\r\n']);
    expect(fdIsOpen(kept)).toBe(true);
    expect(fdIsOpen(stray)).toBe(false); // came with getfd but nobody claimed it
    await send('{"execute":"use-fd","arguments":{"fdname":"tap0"}}');
    expect(taken).toBe(kept);
    await send('{"execute":"closefd","arguments":{"fdname":"tap0"}}');
    expect(connection.output.slice(-1)).toEqual([`{"error": {"class": "GenericError", "desc": "File descriptor named 'tap0' not found"}}\r\n`]);
    await send('{"execute":"getfd","arguments":{"fdname":"1bad"}}', [orphan]);
    expect(connection.output.slice(-1)).toEqual([
      `{"error": {"class": "GenericError", "desc": "Parameter 'fdname' expects a name not starting with a digit"}}\r\n`,
    ]);
    expect(fdIsOpen(orphan)).toBe(false);
    await send('{"execute":"getfd","arguments":{"fdname":"left-open"}}', [named]);
    expect(fdIsOpen(named)).toBe(true);
    connection.close(); // the client is gone: its named fds go with it
    expect(fdIsOpen(named)).toBe(false);
    expect(fdIsOpen(kept)).toBe(true); // ownership moved to the handler
    fs.closeSync(kept);
    await server.close();
  });
});

/** QmpClient against our server and against a real QEMU: same calls, same outcomes. */
import { QmpClient, QmpError, QmpServer } from '../../src/hypervisor/monitor';
import { qemuAvailable, ReferenceQemu, registerStandInVmCommands, tempSocketPath } from './qmp-test-helpers';

describe('QmpClient', () => {
  let server: QmpServer;
  let qemu: ReferenceQemu | undefined;
  const ourSocket = tempSocketPath('client');

  beforeAll(async () => {
    server = new QmpServer();
    registerStandInVmCommands(server);
    await server.listen(ourSocket);
    if (qemuAvailable()) qemu = await ReferenceQemu.start();
    else console.warn('qemu-system-x86_64 is not installed; QmpClient runs against our server only');
  });

  afterAll(async () => {
    await server.close();
    await qemu?.stop();
  });

  const targets = (): Array<[string, string]> => [['baton-hv', ourSocket], ...(qemu ? [['qemu', qemu.socketPath] as [string, string]] : [])];

  test('connect, negotiate, execute, errors with class and desc, events', async () => {
    for (const [name, socketPath] of targets()) {
      const client = await QmpClient.connect(socketPath, { timeoutMs: 5000 });
      try {
        expect(client.greeting?.QMP.capabilities).toEqual(['oob']);
        const version = await client.execute<{ qemu: { major: number } }>('query-version');
        expect(version.qemu.major).toBe(7);
        const failure = await client.execute('nosuch').catch((err: unknown) => err);
        expect(failure).toBeInstanceOf(QmpError);
        expect(failure).toMatchObject({ errorClass: 'CommandNotFound', desc: 'The command nosuch has not been found' });
        const badArgs = await client.execute('getfd', { fdname: 5 }).catch((err: unknown) => err);
        expect(badArgs).toMatchObject({ errorClass: 'GenericError', desc: "Invalid parameter type for 'fdname', expected: string" });
        const stopped = client.waitEvent('STOP');
        await client.execute('stop');
        const event = await stopped;
        expect(event.timestamp.seconds).toBeGreaterThan(1_600_000_000);
        const resumed = client.waitEvent('RESUME', (e) => e.event === 'RESUME');
        await client.execute('cont');
        await resumed;
        expect(await client.execute('query-status')).toMatchObject({ status: 'running', running: true });
        await expect(client.waitEvent('NEVER', undefined, 100)).rejects.toMatchObject({ code: 'QMP_TIMEOUT' });
      } catch (err) {
        throw new Error(`against ${name}: ${(err as Error).message}`);
      } finally {
        client.close();
      }
    }
  });

  test('pending commands are rejected when the connection ends', async () => {
    let release: (() => void) | undefined;
    server.registerCommand('hang', { handler: () => new Promise((resolve) => (release = () => resolve({}))) });
    const client = await QmpClient.connect(ourSocket);
    const pending = client.execute('hang');
    await new Promise((r) => setTimeout(r, 20));
    client.close();
    await expect(pending).rejects.toMatchObject({ code: 'QMP_DISCONNECTED' });
    release?.();
    await expect(client.execute('query-status')).rejects.toMatchObject({ code: 'QMP_DISCONNECTED' });
  });

  test('connecting to a missing socket fails clearly', async () => {
    await expect(QmpClient.connect(ourSocket + '.missing', { timeoutMs: 1000 })).rejects.toMatchObject({ code: 'QMP_DISCONNECTED' });
  });
});

/**
 * Migration over TCP (`tcp:HOST:PORT`), the transport a migration to another host takes:
 * no fds can travel, so RAM is copied live and the destination's NIC runs on a TAP its own
 * netdev opened (the new-tap way). Both hypervisors run in the test's network namespace and
 * meet on its loopback address. Also: what a TCP migration refuses or survives — `local`
 * over tcp:, a malformed address, nobody listening, a port already taken on the destination.
 */
import { netSkipReason } from '../net/net-helpers';
import { migrationLabForSuite } from './migration-helpers';

const skipReason = netSkipReason();
const lab = migrationLabForSuite('mtcp', skipReason);
const GUEST_MIB = 256;
/** A fresh namespace: any port is free on its loopback; this one is just out of the way. */
const PORT = 40000 + (process.pid % 20000);

test('over tcp: RAM is copied live and the guest carries on, on the destination\'s own TAP', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const outcome = await lab.copyToNewTap('tcp', GUEST_MIB, `tcp:127.0.0.1:${PORT}`);
  expect(outcome.sourceEvents.filter((e) => e.event === 'MIGRATION').map((e) => e.data?.status)).toEqual(['setup', 'active', 'device', 'completed']);
  console.log(`${GUEST_MIB} MiB over tcp: ${outcome.info.ram?.transferred} bytes copied, downtime ${outcome.info.downtime} ms, total ${outcome.info['total-time']} ms`);
}, 120_000);

test('tcp: faults are refused or failed with the reason, and the source keeps running', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const source = await lab.startSource({ tag: 'tcpf-src' });
  await source.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });

  // local needs fds, tcp cannot carry them: refused before anything pauses.
  await source.qmp.execute('migrate-set-parameters', { local: true });
  await expect(source.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${PORT}` })).rejects.toThrow(/UNIX domain socket/);
  await source.qmp.execute('migrate-set-parameters', { local: false });

  for (const uri of ['tcp:127.0.0.1', 'tcp:127.0.0.1:0', 'tcp:127.0.0.1:http', 'tcp:[::1:99']) {
    await expect(source.qmp.execute('migrate', { uri })).rejects.toThrow(/bad tcp: migration address/);
  }

  // Nobody listening: the migration fails in setup, saying so; the guest never stopped.
  const ended = source.qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'failed', 30_000);
  await source.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${PORT + 1}` });
  await ended;
  const info = await source.qmp.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
  expect(info).toMatchObject({ status: 'failed' });
  expect(info['error-desc']).toMatch(/cannot connect to the migration destination tcp:127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
  expect(source.qmp.pastEvents().some((e) => e.event === 'STOP')).toBe(false);
  expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'running' });

  // A destination whose port is taken (by another destination) says so, and can try another.
  const first = await lab.startDestination('tcpf-dst1', { netdev: null });
  const second = await lab.startDestination('tcpf-dst2', { netdev: null });
  await first.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${PORT + 2}` });
  await expect(second.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${PORT + 2}` })).rejects.toThrow(/cannot listen for the incoming migration on tcp:127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
  await second.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${PORT + 3}` });
  expect(await second.qmp.execute('query-status')).toMatchObject({ status: 'inmigrate' });

  expect(lab.net.ping(20, 0.005)).toMatchObject({ transmitted: 20, received: 20 });
  for (const hv of [first, second, source]) await lab.retire(hv);
}, 120_000);

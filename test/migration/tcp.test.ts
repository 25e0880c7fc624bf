/**
 * Migration over TCP (`tcp:HOST:PORT`), the transport a migration to another host takes:
 * no fds can travel, so RAM is copied live and the destination's NIC runs on a TAP its own
 * netdev opened (the new-tap way). Both hypervisors run in the test's network namespace and
 * meet on its loopback address. Also: what a TCP migration refuses or survives — `local`
 * over tcp:, a malformed address, nobody listening, a port already taken on the destination.
 */
import { sleep } from '../hypervisor/helpers';
import { netSkipReason } from '../net/net-helpers';
import { migrationLabForSuite, echoReports, tapByName } from './migration-helpers';

const skipReason = netSkipReason();
const lab = migrationLabForSuite('mtcp', skipReason);
const MIB = 1024 * 1024;
const GUEST_MIB = 256;
/** A fresh namespace: any port is free on its loopback; this one is just out of the way. */
const PORT = 40000 + (process.pid % 20000);

test('over tcp: RAM is copied live and the guest carries on, on the destination\'s own TAP', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const source = await lab.startSource({ tag: 'tcp-src', memMiB: GUEST_MIB, append: `echo ip=${lab.net.guestIp}/24 report_ms=200` });
  const newTap = lab.net.tapName(1);
  const destination = await lab.startDestination('tcp-dst', { memMiB: GUEST_MIB, netdev: tapByName(newTap) });
  await lab.waitForLink(newTap, destination.run);
  const reportsBefore = echoReports(lab.chainSerial()).length;

  const outcome = await lab.migrate(source, destination, { local: false, uri: `tcp:127.0.0.1:${PORT}` });
  expect(`${outcome.status} ${outcome.info['error-desc'] ?? ''}`.trim()).toBe('completed');
  expect(outcome.sourceEvents.filter((e) => e.event === 'MIGRATION').map((e) => e.data?.status)).toEqual(['setup', 'active', 'device', 'completed']);
  expect(outcome.info.ram?.transferred).toBeGreaterThan(0);
  expect(outcome.info.ram?.total).toBe(GUEST_MIB * MIB);
  expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
  expect(await destination.qmp.execute('query-status')).toMatchObject({ status: 'running' });

  await lab.retire(source);
  lab.net.configureTap(newTap);
  expect(lab.net.ping(50, 0.005)).toMatchObject({ transmitted: 50, received: 50 });

  // The same guest, carried on: one boot, its counters go on from where they were.
  await sleep(500);
  const reports = echoReports(lab.chainSerial());
  expect(reports.length).toBeGreaterThan(reportsBefore);
  for (let i = 1; i < reports.length; i++) expect(reports[i].frames).toBeGreaterThanOrEqual(reports[i - 1].frames);
  expect(lab.readyCount()).toBe(1);
  console.log(`${GUEST_MIB} MiB over tcp: ${outcome.info.ram?.transferred} bytes copied, downtime ${outcome.info.downtime} ms, total ${outcome.info['total-time']} ms`);
  await lab.retire(destination);
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

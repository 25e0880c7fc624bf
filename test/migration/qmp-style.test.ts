/**
 * The local migration driven by a plain QMP client in QEMU's style (plain-qmp.ts), with the
 * destination built entirely over QMP as libvirt would build a QEMU destination: started
 * `-S --incoming defer` with no NIC on its command line, then `netdev_add` with
 * `incoming-fds`, `device_add virtio-net-pci` with `local-migration`, capabilities,
 * `migrate-set-parameters local`, `migrate-incoming`, `migrate`, MIGRATION events on both
 * sides, `query-status` (the destination stays `paused` because of -S), `cont`, and pings.
 */
import { sleep } from '../hypervisor/helpers';
import { netSkipReason, netUpLine } from '../net/net-helpers';
import { BOOT_MS, GUEST_MAC, MigrationLab, NIC, guestArgs, tapByName } from './migration-helpers';
import { PlainQmp } from './plain-qmp';

const skipReason = netSkipReason();
const lab = new MigrationLab('qmpmig');
const clients: PlainQmp[] = [];

beforeAll(() => {
  if (skipReason) return;
  lab.setUp();
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await lab.cleanup();
}, 60_000);

async function plainConnect(monitorPath: string, isUp: () => boolean): Promise<PlainQmp> {
  const deadline = Date.now() + BOOT_MS;
  for (;;) {
    try {
      const c = await PlainQmp.connect(monitorPath);
      clients.push(c);
      return c;
    } catch (err) {
      if (!isUp() || Date.now() > deadline) throw err;
      await sleep(20);
    }
  }
}

test('QEMU-style QMP session: destination built with netdev_add incoming-fds + device_add, paused by -S until cont', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  lab.serialLog = lab.path('qmp-style.serial.log');
  const sourceRun = lab.startHv('src', [...guestArgs(128, `echo ip=${lab.net.guestIp}/24`), '--netdev', tapByName(lab.tap), '--device', NIC]);
  await lab.waitForLink(lab.tap, sourceRun);
  lab.net.configureTap(lab.tap);
  await sourceRun.waitFor(netUpLine(lab.net.guestIp), BOOT_MS);
  const tapIndex = lab.links().get(lab.tap);
  const source = await plainConnect(sourceRun.monitorPath, () => !sourceRun.exitStatus);

  const destinationRun = lab.startHv('dst', [...guestArgs(128), '-S', '--incoming', 'defer']);
  const destination = await plainConnect(destinationRun.monitorPath, () => !destinationRun.exitStatus);
  expect(await destination.execute('query-status')).toMatchObject({ status: 'inmigrate', running: false });
  await destination.execute('netdev_add', { type: 'tap', id: 'n0', 'incoming-fds': true, script: 'no', downscript: 'no' });
  await destination.execute('device_add', { driver: 'virtio-net-pci', netdev: 'n0', id: 'nic0', mac: GUEST_MAC, 'local-migration': true });

  const events = [{ capability: 'events', state: true }];
  await source.execute('migrate-set-capabilities', { capabilities: events });
  await destination.execute('migrate-set-capabilities', { capabilities: events });
  await source.execute('migrate-set-parameters', { local: true });
  expect(await source.execute('query-migrate-parameters')).toMatchObject({ local: true });
  expect(await source.execute('query-migrate-capabilities')).toContainEqual({ capability: 'events', state: true });

  const uri = lab.migrationUri();
  await destination.execute('migrate-incoming', { uri });
  await source.execute('migrate', { uri });
  const sourceEnd = await source.waitEvent((e) => e.event === 'MIGRATION' && ['completed', 'failed'].includes(e.data?.status as string));
  const info = await source.execute<{ status: string; downtime: number; 'total-time': number; 'error-desc'?: string; ram: { transferred: number } }>('query-migrate');
  expect(`${sourceEnd.data?.status} ${info['error-desc'] ?? ''}`.trim()).toBe('completed');
  await destination.waitEvent((e) => e.event === 'MIGRATION' && e.data?.status === 'completed');

  // QEMU's sequence of states on the source, STOP when it pauses; setup → active → completed on the destination.
  expect(source.migrationStatuses()).toEqual(['setup', 'active', 'device', 'completed']);
  expect(source.events.some((e) => e.event === 'STOP')).toBe(true);
  expect(destination.migrationStatuses()).toEqual(['setup', 'active', 'completed']);
  expect(info).toMatchObject({ status: 'completed', ram: expect.objectContaining({ transferred: 0 }) });
  expect(info.downtime).toBeGreaterThanOrEqual(0);
  expect(info['total-time']).toBeGreaterThanOrEqual(info.downtime);
  expect(await source.execute('query-status')).toMatchObject({ status: 'postmigrate', running: false });

  // -S on the destination: the guest waits, paused, for cont.
  expect(await destination.execute('query-status')).toMatchObject({ status: 'paused', running: false });
  const resumed = destination.waitEvent((e) => e.event === 'RESUME');
  await destination.execute('cont');
  await resumed;
  expect(await destination.execute('query-status')).toMatchObject({ status: 'running', running: true });
  await source.execute('quit');
  await sourceRun.exited;

  const ping = lab.net.ping(100, 0.01);
  expect(ping).toMatchObject({ transmitted: 100, received: 100 });
  expect(lab.links().get(lab.tap)).toBe(tapIndex);
  expect(await destination.execute('x-query-nics')).toEqual([expect.objectContaining({ id: 'nic0', ifname: lab.tap, waitingForFds: false, mac: GUEST_MAC })]);
  console.log(`QMP-style local migration: downtime ${info.downtime} ms, total ${info['total-time']} ms`);
  await destination.execute('quit');
  await destinationRun.exited;
}, 120_000);

/**
 * baton-hv's virtio-net-pci on real TAPs in a network namespace this file creates, driven
 * by the test guest (its own ring-3 virtio-net driver): ping and UDP echo without loss,
 * multiqueue with both TAP queues busy, TAPs handed in by fd (inherited, and with getfd
 * over the monitor with SCM_RIGHTS), set_link, file save/restore in the middle of a
 * transfer, and the same echo test under QEMU's virtio-net-pci.
 *
 * Traffic is checked by test/net/udp-tool.c (built here with gcc): every datagram carries
 * its sequence number and size and a pattern derived from both; every echo is compared
 * byte for byte.
 */
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/native';
import { TEST_GUEST_ELF, sleep } from '../hypervisor/helpers';
import { NetLab, QBOOT, netSkipReason, netUpLine, qemuSkipReason, type EchoResult, type GuestRun } from './net-helpers';

const skipReason = netSkipReason();
const lab = new NetLab('vnet');

/** Datagrams for the long echo run: 1,000,000 takes ~15-25 s here (~50-65 k echoes/s). */
const ECHO_FRAMES = Number(process.env.BATON_NET_ECHO_FRAMES ?? 1_000_000);
const NIC = 'virtio-net-pci,netdev=n0,id=nic0';
const TAP_BY_NAME = (ifname: string, extra = '') => `tap,id=n0,ifname=${ifname},script=no,downscript=no${extra}`;
const BOOT_MS = 20_000;

function guestArgs(append: string, extra: string[] = [], vcpus = 1): string[] {
  return ['--kernel', TEST_GUEST_ELF, '--append', append, '-m', '128', '--smp', String(vcpus), ...extra];
}

async function bootEchoByName(tag: string, tapIndex: number): Promise<{ run: GuestRun; tap: string }> {
  const tap = lab.tapName(tapIndex);
  const run = lab.startHv(tag, guestArgs(`echo ip=${lab.guestIp}/24`, ['--netdev', TAP_BY_NAME(tap), '--device', NIC]));
  await waitForTap(run, tap);
  lab.adoptTap(tap);
  await run.waitFor(netUpLine(lab.guestIp), BOOT_MS);
  return { run, tap };
}

/** baton-hv creates the TAP in the root namespace as it starts; wait until it exists. */
async function waitForTap(run: GuestRun, ifname: string): Promise<void> {
  const deadline = Date.now() + BOOT_MS;
  while (!fs.existsSync(`/sys/class/net/${ifname}`)) {
    if (run.exitStatus) throw new Error(`baton-hv exited before creating ${ifname}\n${run.describe()}`);
    if (Date.now() > deadline) throw new Error(`TAP ${ifname} did not appear\n${run.describe()}`);
    await sleep(20);
  }
}

function expectCleanEcho(result: EchoResult, count: number): void {
  expect(result).toMatchObject({ sent: count, received: count, lost: 0, corrupt: 0, duplicate: 0, foreign: 0 });
}

beforeAll(() => {
  if (skipReason) return;
  lab.setUp();
}, 60_000);

afterAll(async () => {
  await lab.cleanup();
}, 60_000);

describe('virtio-net-pci on a TAP, test guest, baton-hv', () => {
  it(`host pings the guest 1000 times at 2 ms with zero lost; UDP echo of ${ECHO_FRAMES} datagrams, none lost or corrupted`, async () => {
    if (skipReason) return console.warn(skipReason);
    const { run } = await bootEchoByName('echo', 1);
    try {
      const ping = lab.ping(1000, 0.002);
      expect(ping).toMatchObject({ transmitted: 1000, received: 1000 });
      const echo = await lab.echo(ECHO_FRAMES, { window: 128, sockets: 4, timeoutS: 240 });
      expectCleanEcho(echo, ECHO_FRAMES);
      console.log(`baton-hv echo: ping x1000 avg ${ping.avgMs} ms; UDP echo ${echo.received} datagrams (8..1472 B) in ` +
        `${echo.seconds.toFixed(1)} s = ${(echo.received / echo.seconds / 1000).toFixed(1)} k echoes/s, 0 lost, 0 corrupt`);
    } finally {
      await run.stop();
    }
  }, 300_000);

  it('set_link off: the guest reports carrier loss and pings fail; on: link up and pings answer again', async () => {
    if (skipReason) return console.warn(skipReason);
    const { run } = await bootEchoByName('link', 2);
    try {
      const qmp = await lab.qmp(run);
      expect(lab.ping(5, 0.05).received).toBe(5);
      await qmp.execute('set_link', { name: 'nic0', up: false });
      await run.waitFor(/^baton-testguest: link down$/m, 5_000);
      expect((await qmp.execute<Array<{ link: boolean }>>('x-query-nics'))[0].link).toBe(false);
      expect(lab.ping(5, 0.05, 1).received).toBe(0);
      await qmp.execute('set_link', { name: 'nic0', up: true });
      await run.waitFor(/^baton-testguest: link up$/m, 5_000);
      expect(lab.ping(5, 0.05).received).toBe(5);
      expect(run.count(/^baton-testguest: link down$/)).toBe(1);
    } finally {
      await run.stop();
    }
  }, 60_000);

  it('--smp 2, queues=2, mq=on: the guest enables 2 queue pairs and both carry traffic (TAP queue i feeds pair i)', async () => {
    if (skipReason) return console.warn(skipReason);
    const tap = lab.tapName(3);
    const run = lab.startHv('mq', guestArgs(`mq-echo ip=${lab.guestIp} pairs=2 report_ms=200`,
      ['--netdev', TAP_BY_NAME(tap, ',queues=2'), '--device', `${NIC},mq=on`], 2));
    try {
      await waitForTap(run, tap);
      lab.adoptTap(tap);
      await run.waitFor(/^baton-testguest: mq up pairs 2 of 2$/m, BOOT_MS);
      // Many source ports: the TAP spreads flows over its queues by flow hash.
      const count = 100_000;
      const echo = await lab.echo(count, { window: 128, sockets: 32, timeoutS: 120 });
      expectCleanEcho(echo, count);
      await sleep(500);
      // Whole lines only: the serial log may end in a line still being written.
      const reports = [...run.serial().matchAll(/^mq pairs 2 rx (\d+) (\d+) tx (\d+) (\d+)\n/gm)];
      const [rx0, rx1, tx0, tx1] = reports[reports.length - 1].slice(1).map(Number);
      console.log(`baton-hv multiqueue: ${count} echoes over 32 flows; guest pair 0 rx ${rx0} tx ${tx0}, pair 1 rx ${rx1} tx ${tx1}`);
      // Each pair's RX queue is fed only by its own TAP queue fd, TX only writes to it.
      expect(rx0).toBeGreaterThan(count / 20);
      expect(rx1).toBeGreaterThan(count / 20);
      expect(tx0).toBeGreaterThan(count / 20);
      expect(tx1).toBeGreaterThan(count / 20);
      expect(rx0 + rx1).toBeGreaterThanOrEqual(count);
    } finally {
      await run.stop();
    }
  }, 180_000);

  it('a TAP fd inherited from the parent (fd=3) works like one opened by name', async () => {
    if (skipReason) return console.warn(skipReason);
    const tap = lab.tapName(4);
    const opened = native.tapOpen(tap, { vnetHdr: true });
    let run: GuestRun | undefined;
    try {
      lab.adoptTap(tap);
      run = lab.startHv('inherit', guestArgs(`echo ip=${lab.guestIp}/24`, ['--netdev', 'tap,id=n0,fd=3', '--device', NIC]),
        { extraFds: [opened.fd] });
      await run.waitFor(netUpLine(lab.guestIp), BOOT_MS);
    } finally {
      native.close(opened.fd); // the child has its own copy
    }
    try {
      expect(lab.ping(200, 0.002).received).toBe(200);
      expectCleanEcho(await lab.echo(50_000, { timeoutS: 60 }), 50_000);
    } finally {
      await run?.stop();
    }
  }, 120_000);

  it('a TAP fd sent with getfd over the monitor (SCM_RIGHTS), then netdev_add fd=NAME, device_add, cont', async () => {
    if (skipReason) return console.warn(skipReason);
    const tap = lab.tapName(5);
    const opened = native.tapOpen(tap, { vnetHdr: true });
    const run = lab.startHv('getfd', guestArgs(`echo ip=${lab.guestIp}/24`, ['-S']));
    try {
      lab.adoptTap(tap);
      const qmp = await lab.qmp(run, true);
      try {
        await qmp.executeWithFds('getfd', { fdname: 'tapfd' }, [opened.fd]);
      } finally {
        native.close(opened.fd);
      }
      await qmp.execute('netdev_add', { type: 'tap', id: 'n0', fd: 'tapfd' });
      await qmp.execute('device_add', { driver: 'virtio-net-pci', netdev: 'n0', id: 'nic0' });
      const nics = await qmp.execute<Array<{ id: string; ifname: string; queues: number }>>('x-query-nics');
      expect(nics).toEqual([expect.objectContaining({ id: 'nic0', ifname: tap, queues: 1 })]);
      await qmp.execute('cont');
      await run.waitFor(netUpLine(lab.guestIp), BOOT_MS);
      expect(lab.ping(200, 0.002).received).toBe(200);
      expectCleanEcho(await lab.echo(50_000, { timeoutS: 60 }), 50_000);
      // A name used once is gone: the fd now belongs to the netdev.
      await expect(qmp.execute('netdev_add', { type: 'tap', id: 'n1', fd: 'tapfd' })).rejects.toThrow(/tapfd/);
    } finally {
      await run.stop();
    }
  }, 120_000);

  it('save (migrate file:) and restore in a new process during a UDP transfer: the stream continues with intact payloads', async () => {
    if (skipReason) return console.warn(skipReason);
    // A persistent TAP inside the namespace: both processes (run in the namespace) attach
    // to it by name, and it survives the first one's exit.
    const tap = lab.tapName(6);
    lab.createPersistentTap(tap);
    const netArgs = ['--netdev', TAP_BY_NAME(tap), '--device', NIC];
    const append = `echo ip=${lab.guestIp}/24`;
    const statePath = path.join(lab.dir, 'saved.state');
    const source = lab.startHv('save', guestArgs(append, netArgs), { inNetns: true });
    let target: GuestRun | undefined;
    try {
      await source.waitFor(netUpLine(lab.guestIp), BOOT_MS);
      const count = 300_000;
      const transfer = lab.echo(count, { window: 128, sockets: 4, lossTimeoutMs: 300, timeoutS: 120 });
      await sleep(1500); // well into the transfer (~60 k echoes/s)
      const qmpA = await lab.qmp(source);
      await qmpA.execute('migrate', { uri: `file:${statePath}` });
      let migration = { status: 'setup' };
      for (const deadline = Date.now() + 30_000; !['completed', 'failed'].includes(migration.status) && Date.now() < deadline; await sleep(20)) {
        migration = await qmpA.execute<{ status: string }>('query-migrate');
      }
      expect(migration).toMatchObject({ status: 'completed' });
      expect((await qmpA.execute<{ status: string }>('query-status')).status).toBe('postmigrate');
      await source.stop();
      target = lab.startHv('restore', [...guestArgs(append, netArgs), '--incoming', `file:${statePath}`], { inNetns: true });
      const result = await transfer;
      expect(result.corrupt).toBe(0);
      expect(result.foreign).toBe(0);
      expect(result.sent).toBe(count);
      expect(result.received + result.lost).toBe(count);
      // Loss only around the switch: bounded by the window times the restore gap / loss timeout.
      expect(result.lost).toBeLessThan(count * 0.05);
      const qmpB = await lab.qmp(target);
      expect((await qmpB.execute<{ status: string }>('query-status')).status).toBe('running');
      // The restored guest keeps answering: no second boot, and a clean echo afterwards.
      expect(target.count(/^baton-testguest: ready$/)).toBe(0);
      expectCleanEcho(await lab.echo(20_000, { timeoutS: 60 }), 20_000);
      console.log(`save/restore during echo: ${result.received}/${count} echoed, ${result.lost} lost around the switch, 0 corrupt`);
    } finally {
      await source.stop();
      await target?.stop();
      lab.removeTapIfPresent(tap);
    }
  }, 240_000);
});

describe('the same guest and echo test under QEMU virtio-net-pci and baton-hv', () => {
  /** Boots, pings, echoes, toggles the link; returns what a comparison needs. */
  async function echoBehaviour(kind: 'qemu' | 'baton', tap: string): Promise<Record<string, unknown>> {
    const append = `echo ip=${lab.guestIp}/24`;
    const mac = `52:54:00:99:${lab.subnet.toString(16).padStart(2, '0')}:02`;
    const run = kind === 'qemu'
      ? lab.startQemu('cmp-qemu', append, `tap,id=n0,ifname=${tap},script=no,downscript=no,vhost=off`,
        `virtio-net-pci,netdev=n0,id=nic0,disable-legacy=on,romfile=,mac=${mac}`)
      : lab.startHv('cmp-baton', guestArgs(append, ['--netdev', TAP_BY_NAME(tap), '--device', `${NIC},mac=${mac}`]), { inNetns: true });
    try {
      const up = await run.waitFor(netUpLine(lab.guestIp), BOOT_MS);
      const ping = lab.ping(200, 0.005);
      const echo = await lab.echo(50_000, { timeoutS: 90 });
      const qmp = await lab.qmp(run);
      await qmp.execute('set_link', { name: 'nic0', up: false });
      await run.waitFor(/^baton-testguest: link down$/m, 5_000);
      const pingDown = lab.ping(3, 0.05, 1);
      await qmp.execute('set_link', { name: 'nic0', up: true });
      await run.waitFor(/^baton-testguest: link up$/m, 5_000);
      const pingUp = lab.ping(3, 0.05);
      console.log(`${kind}: echo ${echo.received} in ${echo.seconds.toFixed(2)} s (${(echo.received / echo.seconds / 1000).toFixed(1)} k/s), ping avg ${ping.avgMs} ms`);
      return {
        netUp: up[0], pingReceived: ping.received, echoReceived: echo.received, echoLost: echo.lost, echoCorrupt: echo.corrupt,
        pingWhileDown: pingDown.received, pingAfterUp: pingUp.received,
        serialLines: run.serial().split('\n').filter((l) => /^baton-testguest: (ready|net up|link)/.test(l)),
      };
    } finally {
      await run.stop();
    }
  }

  it('echo, ping and set_link give the same results under both', async () => {
    if (skipReason) return console.warn(skipReason);
    const noQemu = qemuSkipReason();
    if (noQemu) return console.warn(`QEMU comparison skipped: ${noQemu}`);
    if (!fs.existsSync(QBOOT)) console.warn(`QEMU comparison: ${QBOOT} missing, SeaBIOS takes ~2 s longer`);
    const tap = lab.tapName(7);
    lab.createPersistentTap(tap);
    try {
      const qemu = await echoBehaviour('qemu', tap);
      const baton = await echoBehaviour('baton', tap);
      expect(qemu).toMatchObject({ pingReceived: 200, echoReceived: 50_000, echoLost: 0, echoCorrupt: 0, pingWhileDown: 0, pingAfterUp: 3 });
      expect(baton).toEqual(qemu);
    } finally {
      lab.removeTapIfPresent(tap);
    }
  }, 180_000);
});

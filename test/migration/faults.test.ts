/**
 * Local migrations that fail, and how: after each, the source still runs with its TAP and
 * its guest answers pings, and the failure says why (query-migrate `error-desc` on the
 * source, or the command's error when refused up front, or the destination's exit).
 * One echo guest serves as the source for the whole file — surviving every fault in a
 * row is the point; it is restarted only if a test broke it, so one failure stays one.
 *
 * Faults: a destination killed before and during the migration; a destination whose
 * netdev opened its own TAP receiving the source's fds; `local` over file: and tcp:
 * (refused before anything pauses); migrate_cancel; a fake destination that answers
 * garbage or hangs up; a hand-written truncated and a corrupted stream into a real
 * destination; and the `incoming-fds` option where it does not belong.
 */
import fs from 'node:fs';
import net from 'node:net';
import { encodeHeader, encodeRecord, encodeSection } from '../../src/hypervisor/migration/stream-format';
import { sleep, threadsOf } from '../hypervisor/helpers';
import { netSkipReason } from '../net/net-helpers';
import { migrationLabForSuite, NIC, type Hv, guestArgs, tapByName } from './migration-helpers';

const skipReason = netSkipReason();
const lab = migrationLabForSuite('mfault', skipReason);
let source: Hv | undefined;
let destinations = 0;


async function runningSource(): Promise<Hv> {
  if (source && !source.run.exitStatus) {
    const s = (await source.qmp.execute<{ status: string }>('query-status')).status;
    if (s === 'running') return source;
    await source.run.stop();
  }
  source = await lab.startSource({ tag: `src${destinations}` });
  await source.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  return source;
}

/** The source after a fault: running, same TAP, guest answering every ping, main thread back at its priority. */
async function expectSourceHealthy(hv: Hv): Promise<void> {
  expect(await hv.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
  expect(threadsOf(hv.run.pid).find((t) => t.tid === hv.run.pid)).toMatchObject({ nice: 0 });
  expect(await hv.qmp.execute('x-query-nics')).toEqual([expect.objectContaining({ ifname: lab.tap, queues: 1, waitingForFds: false })]);
  const ping = lab.net.ping(50, 0.005);
  expect(ping).toMatchObject({ transmitted: 50, received: 50 });
}

function nextDestinationTag(): string {
  return `dst${destinations++}`;
}

/** Source side of a migration expected to fail: its final status and error-desc, and whether it paused. */
async function migrateExpectingFailure(src: Hv, uri: string, during?: () => Promise<void>): Promise<{ status: string; error: string; stopped: boolean }> {
  await src.qmp.execute('migrate-set-parameters', { local: true });
  const since = src.qmp.pastEvents().length;
  const ended = src.qmp.waitEvent('MIGRATION', (e) => ['completed', 'failed', 'cancelled'].includes(e.data?.status as string), 30_000);
  await src.qmp.execute('migrate', { uri });
  await during?.();
  const status = (await ended).data?.status as string;
  const info = await src.qmp.execute<{ 'error-desc'?: string }>('query-migrate');
  const stopped = src.qmp.pastEvents().slice(since).some((e) => e.event === 'STOP');
  return { status, error: info['error-desc'] ?? '', stopped };
}

describe('local migration faults: the source keeps running and says why', () => {
  beforeEach(() => {
    if (skipReason) console.warn(`skipped: ${skipReason}`);
  });

  test('local over file: or tcp: is refused up front, before anything pauses', async () => {
    if (skipReason) return;
    const src = await runningSource();
    await src.qmp.execute('migrate-set-parameters', { local: true });
    const since = src.qmp.pastEvents().length;
    for (const uri of [`file:${lab.path('state.bin')}`, 'tcp:127.0.0.1:4444']) {
      await expect(src.qmp.execute('migrate', { uri })).rejects.toThrow(/local migration .*needs a UNIX domain socket/);
    }
    await sleep(200);
    expect(src.qmp.pastEvents().slice(since).map((e) => e.event)).toEqual([]); // no STOP, no MIGRATION
    expect(fs.existsSync(lab.path('state.bin'))).toBe(false);
    await expectSourceHealthy(src);
  });

  test('destination killed (-9) after migrate-incoming, before the source connects', async () => {
    if (skipReason) return;
    const src = await runningSource();
    const dst = await lab.startDestination(nextDestinationTag());
    const uri = lab.migrationUri();
    await dst.qmp.execute('migrate-incoming', { uri });
    await dst.run.stop();
    const r = await migrateExpectingFailure(src, uri);
    expect(r).toMatchObject({ status: 'failed', stopped: false });
    expect(r.error).toMatch(/cannot connect to the migration destination .*ECONNREFUSED/);
    await expectSourceHealthy(src);
  });

  test('destination killed (-9) during the migration, while the source waits for it', async () => {
    if (skipReason) return;
    const src = await runningSource();
    const dst = await lab.startDestination(nextDestinationTag());
    const uri = lab.migrationUri();
    await dst.qmp.execute('migrate-incoming', { uri });
    // Frozen, the destination lets the source connect and send its setup but never answers:
    // the kill lands in the middle of the migration, every time.
    process.kill(dst.run.pid, 'SIGSTOP');
    const r = await migrateExpectingFailure(src, uri, async () => {
      await src.qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'setup', 10_000, { includePast: true });
      await sleep(100);
      process.kill(dst.run.pid, 'SIGKILL');
    });
    expect(r).toMatchObject({ status: 'failed', stopped: false });
    expect(r.error).toMatch(/the destination went away before its "ready" reply/);
    await expectSourceHealthy(src);
  });

  test('a destination that opened its own TAP (no incoming-fds) refuses the fds; the source resumes', async () => {
    if (skipReason) return;
    const src = await runningSource();
    const linksBefore = lab.links();
    const otherTap = lab.net.tapName(7);
    const dst = await lab.startDestination(nextDestinationTag(), { netdev: tapByName(otherTap) });
    await lab.waitForLink(otherTap, dst.run);
    const uri = lab.migrationUri();
    await dst.qmp.execute('migrate-incoming', { uri });
    const r = await migrateExpectingFailure(src, uri);
    expect(r).toMatchObject({ status: 'failed', stopped: true }); // it failed after the pause: the source resumed
    expect(r.error).toMatch(/netdev n0 received TAP fds from the migration but was not created with incoming-fds=true/);
    await dst.run.exited;
    expect(dst.run.exitStatus?.code).not.toBe(0);
    expect(dst.run.stderr).toMatch(/not created with incoming-fds=true/);
    await expectSourceHealthy(src);
    expect(lab.links()).toEqual(linksBefore); // its own TAP went with it; ours is untouched
  });

  test('migrate_cancel right after migrate, and while the destination does not answer: cancelled, source running', async () => {
    if (skipReason) return;
    const src = await runningSource();
    // Right after migrate: both commands sent back to back.
    let dst = await lab.startDestination(nextDestinationTag());
    let uri = lab.migrationUri();
    await dst.qmp.execute('migrate-incoming', { uri });
    await src.qmp.execute('migrate-set-parameters', { local: true });
    let ended = src.qmp.waitEvent('MIGRATION', (e) => ['completed', 'failed', 'cancelled'].includes(e.data?.status as string), 30_000);
    const [migrated, cancelled] = await Promise.allSettled([src.qmp.execute('migrate', { uri }), src.qmp.execute('migrate_cancel')]);
    expect([migrated.status, cancelled.status]).toEqual(['fulfilled', 'fulfilled']);
    expect((await ended).data?.status).toBe('cancelled');
    expect(await src.qmp.execute('query-migrate')).toMatchObject({ status: 'cancelled' });
    await dst.run.exited; // the destination saw the channel close and gave up
    await expectSourceHealthy(src);

    // While the (frozen) destination has not answered the setup.
    dst = await lab.startDestination(nextDestinationTag());
    uri = lab.migrationUri();
    await dst.qmp.execute('migrate-incoming', { uri });
    process.kill(dst.run.pid, 'SIGSTOP');
    ended = src.qmp.waitEvent('MIGRATION', (e) => ['completed', 'failed', 'cancelled'].includes(e.data?.status as string), 30_000);
    await src.qmp.execute('migrate', { uri });
    await src.qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'setup', 10_000, { includePast: true });
    await sleep(100);
    await src.qmp.execute('migrate_cancel');
    expect((await ended).data?.status).toBe('cancelled');
    await dst.run.stop();
    await expectSourceHealthy(src);
  });

  test('a fake destination that answers garbage, or hangs up: the migration fails and says so', async () => {
    if (skipReason) return;
    const src = await runningSource();
    const cases: Array<{ name: string; onConnection: (s: net.Socket) => void; expected: RegExp }> = [
      { name: 'garbage', onConnection: (s) => s.write('HTTP/1.1 400 Bad Request\r\n\r\n'), expected: /destination reply of \d+ bytes is implausible/ },
      { name: 'not-json', onConnection: (s) => s.write(Buffer.concat([Buffer.from([5, 0, 0, 0]), Buffer.from('hello')])), expected: /destination reply .* is not valid JSON/ },
      { name: 'hang-up', onConnection: (s) => s.destroy(), expected: /the destination went away/ /* while sending (EPIPE) or before its "ready" reply: a race */ },
    ];
    for (const c of cases) {
      const socketPath = lab.path(`fake-${c.name}.sock`);
      const server = net.createServer((s) => {
        s.on('error', () => undefined);
        s.resume(); // swallow the stream
        c.onConnection(s);
      });
      await new Promise<void>((resolve) => server.listen(socketPath, resolve));
      try {
        const r = await migrateExpectingFailure(src, `unix:${socketPath}`);
        expect(r.status).toBe('failed');
        expect(r.error).toMatch(c.expected);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
      await expectSourceHealthy(src);
    }
  });

  test('a truncated or corrupted stream into a real destination: it names the section and exits non-zero', async () => {
    if (skipReason) return;
    const machine = encodeSection('machine', 1, encodeRecord({ name: 'vm', memoryMiB: 128, vcpus: 1, cpuModel: 'baton-pvm', ram: 'copy', status: 'running' }));
    const clock = encodeSection('kvm/clock', 1, encodeRecord({}, { clock: Buffer.alloc(48, 1) }));
    const truncated = Buffer.concat([encodeHeader(), ...machine, ...clock]).subarray(0, -10);
    const corruptClock = clock.map((b) => Buffer.from(b));
    corruptClock[1][corruptClock[1].length - 1] ^= 0xff;
    const corrupted = Buffer.concat([encodeHeader(), ...machine, ...corruptClock]);
    const cases = [
      { stream: truncated, expected: /section "kvm\/clock": truncated/ },
      { stream: corrupted, expected: /section "kvm\/clock": checksum mismatch/ },
    ];
    for (const c of cases) {
      const dst = await lab.startDestination(nextDestinationTag(), { netdev: null });
      const uri = lab.migrationUri();
      await dst.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      await dst.qmp.execute('migrate-incoming', { uri });
      const failed = dst.qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'failed', 10_000);
      const sock = net.connect(uri.slice('unix:'.length));
      sock.on('error', () => undefined);
      await new Promise<void>((resolve) => sock.once('connect', resolve));
      sock.resume();
      await new Promise<void>((resolve) => sock.end(c.stream, resolve));
      await failed;
      const info = await dst.qmp.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({ 'error-desc': '' }));
      await dst.run.exited;
      sock.destroy();
      expect(dst.run.exitStatus?.code).toBe(1);
      expect(dst.run.stderr).toMatch(c.expected);
      if (info['error-desc']) expect(info['error-desc']).toMatch(c.expected);
    }
  });

  test('incoming-fds where it does not belong is refused, naming the option', async () => {
    if (skipReason) return;
    // Outside an incoming migration: the running source, and a VM started normally with -S.
    const src = await runningSource();
    const outside = /incoming-fds: only valid while an incoming migration is expected/;
    await expect(src.qmp.execute('netdev_add', { type: 'tap', id: 'n9', 'incoming-fds': true, script: 'no', downscript: 'no' })).rejects.toThrow(outside);
    const prelaunch = await lab.connect(lab.startHv(nextDestinationTag(), [...guestArgs(128, 'counter'), '-S'], { serialLog: lab.path('prelaunch.log') }), 'prelaunch');
    await expect(prelaunch.qmp.execute('netdev_add', { type: 'tap', id: 'n0', 'incoming-fds': true, script: 'no', downscript: 'no' })).rejects.toThrow(outside);
    await prelaunch.run.stop();

    // In an incoming destination, with options that contradict it.
    const dst = await lab.startDestination(nextDestinationTag(), { netdev: null });
    const base = { type: 'tap', id: 'n0', 'incoming-fds': true, script: 'no', downscript: 'no' };
    await expect(dst.qmp.execute('netdev_add', { ...base, ifname: 'bt-x' })).rejects.toThrow(/ifname/);
    await expect(dst.qmp.execute('netdev_add', { ...base, fd: '3' })).rejects.toThrow(/\bfd\b.*incoming-fds/);
    await expect(dst.qmp.execute('netdev_add', { ...base, script: '/etc/qemu-ifup' })).rejects.toThrow(/script.*must be "no"/);
    await expect(dst.qmp.execute('netdev_add', { ...base, downscript: 'yes' })).rejects.toThrow(/downscript.*must be "no"/);
    // And on the command line: baton-hv refuses to start.
    const refused = lab.startHv(nextDestinationTag(), [...guestArgs(128), '--incoming', 'defer', '--netdev', `${'tap,id=n0,incoming-fds=on,script=no,downscript=no'},ifname=bt-y`, '--device', NIC],
      { serialLog: lab.path('refused.log') });
    await refused.exited;
    expect(refused.exitStatus?.code).not.toBe(0);
    expect(refused.stderr).toMatch(/ifname/);
    await dst.run.stop();
    await expectSourceHealthy(src);
  });
});

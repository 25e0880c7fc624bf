/**
 * Local migration with the TAP handed over by fd (issue 6), on real KVM and a real TAP in
 * a namespace this file creates: the test guest in `echo` mode moves from baton-hv process
 * to baton-hv process ten times in a row (A→B→C…) while the host pings it every 2 ms and
 * streams sequence-numbered UDP datagrams through its echo port.
 *
 * What must hold: not one ping or datagram lost, none reordered or duplicated, the TAP
 * keeps its ifindex and no interface appears or disappears in the namespace, and the guest
 * never restarts (one `ready` line in the serial log all processes append to; its echo
 * counters keep growing from process to process instead of starting over).
 */
import { sleep, threadsOf } from '../hypervisor/helpers';
import { netSkipReason } from '../net/net-helpers';
import { migrationLabForSuite, echoReports, type Hv, type MigrationOutcome } from './migration-helpers';

const skipReason = netSkipReason();
const lab = migrationLabForSuite('lmig', skipReason);
const MIGRATIONS = 10;


/** Ten local migrations in a row; each source is retired once its destination runs. */
async function migrateChain(first: Hv, tagPrefix: string): Promise<{ last: Hv; outcomes: MigrationOutcome[] }> {
  let current = first;
  const outcomes: MigrationOutcome[] = [];
  for (let i = 0; i < MIGRATIONS; i++) {
    const next = await lab.startDestination(`${tagPrefix}${i}`);
    if (i === 0) expectThreads(next, 'preparing');
    const outcome = await lab.migrate(current, next, { local: true });
    if (outcome.status !== 'completed') {
      throw new Error(`migration ${i} ${outcome.status}: ${outcome.info['error-desc']}\n${next.run.describe()}`);
    }
    outcomes.push(outcome);
    expect(await current.qmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
    expect(await next.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    await lab.retire(current);
    current = next;
    // A little traffic between migrations, so each one starts from a busy NIC.
    await sleep(150);
  }
  return { last: current, outcomes };
}

/**
 * The hypervisors' threads as the host scheduler sees them (src/hypervisor/thread-priority.ts,
 * host-threads.ts): Node's helpers SCHED_IDLE; a destination's main thread at nice 19 until the
 * switchover (with CAP_SYS_NICE, i.e. as root), back at 0 once it has settled; vCPUs at 0 always.
 */
function expectThreads(hv: Hv, phase: 'preparing' | 'settled'): void {
  const threads = threadsOf(hv.run.pid);
  const main = threads.find((t) => t.tid === hv.run.pid);
  const vcpus = threads.filter((t) => t.comm.endsWith('/KVM'));
  expect(vcpus).toEqual([expect.objectContaining({ comm: 'CPU 0/KVM', nice: 0, policy: 'other' })]);
  expect(main).toMatchObject({ nice: phase === 'preparing' && process.getuid?.() === 0 ? 19 : 0, policy: 'other' });
  const helpers = threads.filter((t) => t !== main && !vcpus.includes(t) && t.comm === main?.comm);
  expect(helpers.length).toBeGreaterThanOrEqual(4);
  for (const h of helpers) expect(h).toMatchObject({ policy: 'idle' });
}

function summarize(outcomes: MigrationOutcome[]): string {
  const downtimes = outcomes.map((o) => o.info.downtime ?? NaN);
  return `downtime ms [${downtimes.join(', ')}], total ms [${outcomes.map((o) => o.info['total-time']).join(', ')}]`;
}

test('10 local migrations under ping -i 0.002 and a UDP echo stream: nothing lost or reordered, same TAP, no reboot', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const source = await lab.startSource({ append: `echo ip=${lab.net.guestIp}/24 report_ms=500` });
  const linksBefore = lab.links();
  const tapIndex = linksBefore.get(lab.tap);
  expect(tapIndex).toBeDefined();

  const ping = lab.startPing(0.002);
  // Mixed sizes are not needed here: one size, 1000 datagrams/s, every echo checked byte for byte.
  const stream = lab.startSeqStream(1000, 512);
  await Promise.all([ping.flowing, stream.flowing]);
  await sleep(300);

  const { last, outcomes } = await migrateChain(source, 'a');
  await sleep(300);
  const [pings, udp] = await Promise.all([ping.stop(), stream.stop()]);
  console.log(`10 local migrations: ${summarize(outcomes)}; ping ${pings.received}/${pings.transmitted} longest reply gap ${pings.maxGapMs.toFixed(1)} ms; ` +
    `udp ${udp.received}/${udp.sent} longest gap ${udp.maxGapMs.toFixed(1)} ms max rtt ${udp.maxRttMs.toFixed(1)} ms`);

  expect(pings.transmitted).toBeGreaterThan(1000);
  expect(pings.lost).toBe(0);
  expect(udp.sent).toBeGreaterThan(2000);
  expect(udp).toMatchObject({ missing: 0, reordered: 0, duplicate: 0, corrupt: 0 });

  // Same TAP (same ifindex), nothing created or removed in the namespace.
  expect(lab.links()).toEqual(linksBefore);
  expect(await last.qmp.execute('x-query-nics')).toEqual([expect.objectContaining({ id: 'nic0', ifname: lab.tap, waitingForFds: false })]);

  // One boot for the whole chain, and the guest's counters carried across every process.
  await last.run.waitFor(/^echo frames/m);
  expect(lab.readyCount()).toBe(1);
  const reports = echoReports(last.run.serial());
  // Reports come every 500 ms whatever process the guest is in: at least two, never going back.
  expect(reports.length).toBeGreaterThanOrEqual(2);
  for (let i = 1; i < reports.length; i++) expect(reports[i].frames).toBeGreaterThanOrEqual(reports[i - 1].frames);
  expect(reports[reports.length - 1].dropped).toBe(0);

  await sleep(300); // past the destination's settling time
  expectThreads(last, 'settled');
  await lab.retire(last);
}, 240_000);

test('ordered host→guest stream at a steady rate across 10 migrations: none missing, reordered or duplicated', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const source = await lab.startSource({ tag: 'ord-src' });
  const stream = lab.startSeqStream(2000, 1400);
  await stream.flowing;
  await sleep(200);
  const { last, outcomes } = await migrateChain(source, 'b');
  await sleep(200);
  const udp = await stream.stop();
  console.log(`ordered stream over 10 migrations: ${udp.received}/${udp.sent} datagrams, longest gap ${udp.maxGapMs.toFixed(1)} ms; ${summarize(outcomes)}`);
  expect(udp.sent).toBeGreaterThan(5000);
  expect(udp).toMatchObject({ missing: 0, reordered: 0, duplicate: 0, corrupt: 0, sendErrors: 0 });
  expect(udp.received).toBe(udp.sent);
  await lab.retire(last);
}, 240_000);

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { QmpClient } from '../../src/hypervisor/monitor/qmp-client';
import { ActiveRecord, isProcessAlive, readRuntimeRecord } from '../../src/domain/runtime';
import { tempBatonDirs } from '../domain/helpers';
import { baton, batonEnv } from '../cli/helpers';
import { parseCpuset } from '../../src/util/cpuset';
import { threadsOf } from '../hypervisor/helpers';
import { cleanUp, e2eSkipReason, ensureDistBuilt, guestDomainXml, linkExistsIn, pingFrom, READY_LINE, sleep, waitFor } from './helpers';

/**
 * `baton vm migrate` as a user runs it: the real CLI in a subprocess, the ring-3 test guest in
 * echo mode under a real baton-hv, its TAP's host end in a network namespace of this run, and
 * `ping -i 0.002` from that namespace the whole time. Each policy's pause (the hypervisor's
 * `downtime`) and the pings lost are printed; local-fd must lose none.
 */
const skipReason = e2eSkipReason();
const RUN = process.pid.toString(36);
const NETNS = `bt-mig-${process.pid}`;
const TAP = `bt-m${RUN}a`;
const NEW_TAP = `${TAP}n`;
const SUBNET = `10.99.${200 + (process.pid % 50)}`;
const GUEST_IP = `${SUBNET}.2`;
const NAME = 'e2e-mig';
const LOCAL_MIGRATIONS = 10;
/** <cputune> as the bench uses it: the vCPU on the last CPU, the rest on the first. */
const ONLINE_CPUS = parseCpuset(fs.readFileSync('/sys/devices/system/cpu/online', 'utf8').trim());
const [FIRST_CPU, LAST_CPU] = [String(ONLINE_CPUS[0]), String(ONLINE_CPUS[ONLINE_CPUS.length - 1])];
const CPUTUNE = `<cputune><vcpupin vcpu='0' cpuset='${LAST_CPU}'/><emulatorpin cpuset='${FIRST_CPU}'/></cputune>`;

/** Every migration's destination honours the domain's <cputune>, like the first hypervisor. */
function expectPinned(pid: number): void {
  const threads = threadsOf(pid);
  expect(threads.filter((t) => t.comm.endsWith('/KVM')).map((t) => t.cpus)).toEqual([LAST_CPU]);
  expect(threads.filter((t) => t.tid === pid).map((t) => t.cpus)).toEqual([FIRST_CPU]);
}

interface PingCount {
  transmitted: number;
  /** Distinct requests answered. */
  received: number;
  /**
   * Requests with no answer although a later one was answered. Requests still in flight when
   * ping is stopped (after the last answered one) are not losses: under load an answer can
   * take longer than the wait before SIGINT.
   */
  lost: number;
}

interface PingRun {
  child: ChildProcess;
  stop(): Promise<PingCount>;
}

/**
 * `ping -i 0.002` from the namespace until stopped (ip netns exec execs ping: the pid is
 * ping's). Every reply line is read, so losses are counted by sequence number.
 */
function startPing(): PingRun {
  const child = spawn('ip', ['netns', 'exec', NETNS, 'ping', '-i', '0.002', GUEST_IP], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return {
    child,
    async stop() {
      await sleep(300); // let the last requests come back
      child.kill('SIGINT');
      await exited;
      const summary = /(\d+) packets transmitted/.exec(output);
      if (!summary) throw new Error(`no ping summary in: ${output.slice(-2000)}`);
      const answered = new Set([...output.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1])));
      const last = Math.max(0, ...answered);
      return { transmitted: Number(summary[1]), received: answered.size, lost: last - answered.size };
    },
  };
}

function ifindexIn(netns: string, dev: string): number {
  return Number(execFileSync('ip', ['-n', netns, '-o', 'link', 'show', 'dev', dev], { encoding: 'utf8' }).split(':')[0]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** The pid of the node process whose command line names `needle` (the destination's config file; not its keeper shell). */
function pidWithArgument(needle: string): number | undefined {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args.includes(needle) && args[0] === process.execPath) return Number(entry);
    } catch {
      /* gone meanwhile */
    }
  }
  return undefined;
}

describe('baton vm migrate (real CLI, real guest, ping running)', () => {
  const dirs = tempBatonDirs('e2e-mig');
  const env = batonEnv(dirs);
  const xmlFile = path.join(dirs.root, `${NAME}.xml`);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each command has its own shape; the assertions check it
  const json = async (args: string[]): Promise<any> => JSON.parse((await baton([...args, '--json'], env)).stdout);
  const serialLog = (): string => {
    try {
      return fs.readFileSync(path.join(dirs.logDir, `${NAME}.serial.log`), 'latin1');
    } catch {
      return '';
    }
  };
  const active = (): ActiveRecord => {
    const record = readRuntimeRecord(dirs, NAME);
    if (!record || record.state === 'shut off') throw new Error(`${NAME} is not recorded as active: ${JSON.stringify(record)}`);
    return record;
  };
  const incomingLeftovers = (): string[] => fs.readdirSync(dirs.runDir).filter((f) => f.includes('.incoming-'));

  beforeAll(async () => {
    if (skipReason) return;
    ensureDistBuilt();
    fs.mkdirSync(dirs.root, { recursive: true });
    fs.writeFileSync(xmlFile, guestDomainXml({ name: NAME, cmdline: `echo ip=${GUEST_IP}/24`, nic: { tap: TAP, mac: '52:54:00:e2:e1:02', netns: NETNS, hostAddress: `${SUBNET}.1/24` }, cputune: CPUTUNE }));
    expect((await baton(['vm', 'define', xmlFile], env)).status).toBe(0);
    const start = await json(['vm', 'start', NAME]);
    expect(start.state).toBe('running');
    await waitFor('the guest network up', () => (serialLog().includes(`ip ${GUEST_IP}`) ? true : undefined));
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
  }, 120_000);

  afterAll(async () => {
    if (!skipReason) await cleanUp(dirs, env, [NAME], [NETNS], [TAP, NEW_TAP]);
    dirs.cleanup();
  }, 60_000);

  it(`moves the domain ${LOCAL_MIGRATIONS} times with --local: no ping lost, same TAP, new pid, no reboot`, async () => {
    if (skipReason) return console.warn(skipReason);
    const ifindexBefore = ifindexIn(NETNS, TAP);
    const first = active();
    expectPinned(first.pid);
    let pid = first.pid;
    const pauses: number[] = [];
    const ping = startPing();
    try {
      await sleep(300);
      for (let i = 0; i < LOCAL_MIGRATIONS; i++) {
        const run = await baton(['vm', 'migrate', NAME, '--local', '--json'], env);
        expect(run.status).toBe(0);
        const result = JSON.parse(run.stdout);
        expect(result).toMatchObject({ name: NAME, uuid: first.uuid, id: first.id, policy: 'local-fd', ram: 'fd', old_pid: pid, state: 'running' });
        expect(result.nics).toEqual([expect.objectContaining({ device: 'nic0', policy: 'local-fd', tap: TAP, previousTap: TAP, ifindex: ifindexBefore })]);
        expect(result.new_pid).not.toBe(pid);
        expectPinned(result.new_pid);
        expect(typeof result.pause_ms).toBe('number');
        expect(result.total_ms).toBeGreaterThanOrEqual(result.pause_ms);
        const record = active();
        expect(record).toMatchObject({ pid: result.new_pid, state: 'running', reason: 'migrated', migrations: i + 1, startedAt: first.startedAt, monitorSocket: first.monitorSocket });
        expect(isProcessAlive(pid, i === 0 ? first.pidStartTime : '')).toBe(false);
        expect(await json(['vm', 'list'])).toEqual([expect.objectContaining({ name: NAME, uuid: first.uuid, id: first.id, state: 'running' })]);
        console.log(`e2e migrate --local #${i + 1}: pause ${result.pause_ms} ms, migration ${result.total_ms} ms (setup ${result.setup_ms} ms), destination start ${result.destination_start_ms} ms, command ${result.elapsed_ms} ms, pid ${pid} → ${result.new_pid}`);
        pauses.push(result.pause_ms);
        pid = result.new_pid;
        await sleep(100);
      }
    } finally {
      const pings = await ping.stop();
      console.log(`e2e migrate --local: ${LOCAL_MIGRATIONS} migrations, median pause ${median(pauses)} ms (${pauses.join(', ')}), pings ${pings.received}/${pings.transmitted} answered, ${pings.lost} lost`);
      expect(pings.received).toBeGreaterThan(100);
      expect(pings.lost).toBe(0);
    }

    // The very same TAP, and no other one made.
    expect(ifindexIn(NETNS, TAP)).toBe(ifindexBefore);
    expect(linkExistsIn(NETNS, NEW_TAP) || linkExistsIn(undefined, NEW_TAP)).toBe(false);
    // Continuity: state and reason, the monitor and console at the canonical paths, one boot only.
    expect((await baton(['vm', 'domstate', NAME, '--reason'], env)).stdout).toBe('running (migrated)\n');
    const record = active();
    const monitor = await QmpClient.connect(record.monitorSocket, { timeoutMs: 5000 });
    try {
      expect(await monitor.execute('query-status')).toMatchObject({ status: 'running' });
    } finally {
      monitor.close();
    }
    await new Promise<void>((resolve, reject) => {
      const consoleClient = net.connect(record.consoleSocket, () => {
        consoleClient.destroy();
        resolve();
      });
      consoleClient.once('error', reject);
    });
    expect(serialLog().split(READY_LINE).length - 1).toBe(1);
    expect(incomingLeftovers()).toEqual([]);
    // Every retired source's exit was seen by its reaper and left alone.
    const domainLog = fs.readFileSync(path.join(dirs.logDir, `${NAME}.log`), 'utf8');
    expect(domainLog.match(/not this process: nothing to record/g)?.length ?? 0).toBeGreaterThanOrEqual(LOCAL_MIGRATIONS - 1);
    expect(domainLog).not.toMatch(/is shut off \((shutdown|crashed)\)/);
  }, 300_000);

  it('moves the domain with --policy new-tap (new TAP, host side moved) and back to local-fd', async () => {
    if (skipReason) return console.warn(skipReason);
    const before = active();
    const oldIfindex = ifindexIn(NETNS, TAP);
    const ping = startPing();
    let result;
    try {
      await sleep(300);
      const run = await baton(['vm', 'migrate', NAME, '--policy', 'new-tap', '--json'], env);
      expect(run.status).toBe(0);
      result = JSON.parse(run.stdout);
    } finally {
      const pings = await ping.stop();
      console.log(`e2e migrate --policy new-tap: pause ${result?.pause_ms} ms, host side moved in ${result?.nics?.[0]?.hostSwitchMs} ms, pings ${pings.received}/${pings.transmitted} answered, ${pings.lost} lost`);
      expect(pings.received).toBeGreaterThan(0);
    }
    expect(result).toMatchObject({ policy: 'new-tap', ram: 'fd', old_pid: before.pid, id: before.id });
    expect(result.nics).toEqual([expect.objectContaining({ device: 'nic0', policy: 'new-tap', tap: NEW_TAP, previousTap: TAP })]);
    // The new TAP sits where the old one was, with its address; the old one is gone.
    expect(linkExistsIn(NETNS, NEW_TAP)).toBe(true);
    expect(linkExistsIn(NETNS, TAP)).toBe(false);
    expect(linkExistsIn(undefined, NEW_TAP)).toBe(false);
    expect(ifindexIn(NETNS, NEW_TAP)).not.toBe(oldIfindex);
    expect(execFileSync('ip', ['-n', NETNS, '-o', 'addr', 'show', 'dev', NEW_TAP], { encoding: 'utf8' })).toContain(`${SUBNET}.1/24`);
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
    expect(active()).toMatchObject({ pid: result.new_pid, state: 'running' });
    // The destination keeps its fds to itself until a migration asks otherwise (qom-set).
    const runningConfig = (): string => fs.readFileSync(path.join(dirs.runDir, `${NAME}.hv-config`), 'utf8');
    expect(runningConfig()).toContain('local-migration=off');

    // A plain `vm migrate` uses the domain's policy (auto = local-fd): the new TAP travels as is.
    const plain = await json(['vm', 'migrate', NAME]);
    expect(plain).toMatchObject({ policy: 'local-fd', old_pid: result.new_pid });
    expect(plain.nics).toEqual([expect.objectContaining({ tap: NEW_TAP, previousTap: NEW_TAP })]);
    expect(runningConfig()).not.toContain('local-migration=off');
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);

    // new-tap again returns to the configured name.
    const back = await json(['vm', 'migrate', NAME, '--policy', 'new-tap']);
    expect(back.nics).toEqual([expect.objectContaining({ tap: TAP, previousTap: NEW_TAP })]);
    expect(linkExistsIn(NETNS, TAP)).toBe(true);
    expect(linkExistsIn(NETNS, NEW_TAP)).toBe(false);
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
    expect(serialLog().split(READY_LINE).length - 1).toBe(1);
  }, 180_000);

  it('moves the domain with --policy netpass (new TAP, frames of the pause replayed), there and back', async () => {
    if (skipReason) return console.warn(skipReason);
    for (const [from, to] of [[TAP, NEW_TAP], [NEW_TAP, TAP]]) {
      const ping = startPing();
      let result;
      try {
        await sleep(300);
        result = await json(['vm', 'migrate', NAME, '--policy', 'netpass']);
      } finally {
        const pings = await ping.stop();
        console.log(`e2e migrate --policy netpass: pause ${result?.pause_ms} ms, host side moved in ${result?.nics?.[0]?.hostSwitchMs} ms, pings ${pings.received}/${pings.transmitted} answered, ${pings.lost} lost`);
        expect(pings.received).toBeGreaterThan(0);
      }
      expect(result).toMatchObject({ policy: 'netpass', state: 'running' });
      expect(result.nics).toEqual([expect.objectContaining({ policy: 'netpass', tap: to, previousTap: from })]);
      expect(linkExistsIn(NETNS, to)).toBe(true);
      expect(linkExistsIn(NETNS, from)).toBe(false);
      expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
    }
  }, 180_000);

  it.each([[['--local']], [['--policy', 'new-tap']]])('keeps the domain in its old process when the destination dies (%j)', async (policyFlags: string[]) => {
    if (skipReason) return console.warn(skipReason);
    const before = active();
    const ifindex = ifindexIn(NETNS, TAP);
    const ping = startPing();
    let killed: number | undefined;
    let run;
    try {
      await sleep(300);
      const migrating = baton(['vm', 'migrate', NAME, ...policyFlags, '--json'], env);
      // The destination's config file appears as it is spawned; its process names it.
      const configFile = await waitFor(
        'the destination hypervisor to be spawned',
        () => fs.readdirSync(dirs.runDir).find((f) => f.startsWith(`${NAME}.hv-config.incoming-`)),
        20_000,
        5,
      );
      killed = await waitFor('the destination process', () => pidWithArgument(path.join(dirs.runDir, configFile)), 10_000, 5);
      process.kill(killed, 'SIGKILL');
      run = await migrating;
    } finally {
      const pings = await ping.stop();
      console.log(`e2e migrate ${policyFlags.join(' ')}, destination killed: pings ${pings.received}/${pings.transmitted} answered, ${pings.lost} lost`);
      expect(pings.received).toBeGreaterThan(0);
      expect(pings.lost).toBe(0);
    }
    expect(run.status).toBe(1);
    const error = JSON.parse(run.stdout).error;
    expect(error).toMatchObject({ code: 'EMIGRATE', pid: before.pid, sourceStatus: 'running' });
    expect(error.message).toMatch(new RegExp(`migration of domain '${NAME}' failed: [\\s\\S]*the domain stays in baton-hv pid ${before.pid}`));
    console.log(`e2e migrate failure message: ${error.message}`);
    // Nothing changed: same record, same process, same TAP with its address; the destination's files and TAP are gone.
    expect(active()).toEqual(before);
    expect(isProcessAlive(before.pid, before.pidStartTime)).toBe(true);
    expect(ifindexIn(NETNS, TAP)).toBe(ifindex);
    expect(execFileSync('ip', ['-n', NETNS, '-o', 'addr', 'show', 'dev', TAP], { encoding: 'utf8' })).toContain(`${SUBNET}.1/24`);
    expect(linkExistsIn(NETNS, NEW_TAP) || linkExistsIn(undefined, NEW_TAP)).toBe(false);
    expect(incomingLeftovers()).toEqual([]);
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
    // And the next migration works.
    expect(await json(['vm', 'migrate', NAME, '--local'])).toMatchObject({ old_pid: before.pid, policy: 'local-fd' });
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
  }, 120_000);

  it('refuses bad flags, unknown domains and a shut-off domain with a clear error', async () => {
    if (skipReason) return console.warn(skipReason);
    expect((await json(['vm', 'migrate', NAME, '--local', '--policy', 'new-tap'])).error).toMatchObject({ code: 'EUSAGE', message: expect.stringContaining('--local means policy local-fd') });
    expect((await json(['vm', 'migrate', NAME, '--policy', 'bogus'])).error.code).toBe('EUSAGE');
    expect((await json(['vm', 'migrate', 'no-such-domain'])).error.code).toBe('ENODOMAIN');

    expect((await json(['vm', 'destroy', NAME])).stoppedBy).toBeDefined();
    const refused = await baton(['vm', 'migrate', NAME, '--local'], env);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain(`error: domain '${NAME}' is not running (shut off, destroyed); only a running or paused domain can migrate — start it with 'baton vm start ${NAME}'`);
    expect((await json(['vm', 'migrate', NAME])).error).toMatchObject({ code: 'EDOMAINNOTACTIVE', domain: NAME });
  }, 60_000);
});

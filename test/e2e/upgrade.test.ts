import fs from 'node:fs';
import path from 'node:path';
import { ActiveRecord, readRuntimeRecord, writeRuntimeRecord } from '../../src/domain/runtime';
import { tempBatonDirs } from '../domain/helpers';
import { baton, batonEnv } from '../cli/helpers';
import { cleanUp, e2eSkipReason, ensureDistBuilt, guestDomainXml, pingFrom, waitFor } from './helpers';

/**
 * `baton host upgrade` (what systemd/baton-upgrade.path runs): a running domain recorded
 * with an older hypervisor build moves to a process of the installed build, live, keeping
 * its network; a domain already on the installed build is left alone.
 */
const skipReason = e2eSkipReason();
const RUN = process.pid.toString(36);
const NETNS = `bt-upg-${process.pid}`;
const TAP = `bt-u${RUN}a`;
const SUBNET = `10.99.${150 + (process.pid % 40)}`;
const GUEST_IP = `${SUBNET}.2`;
const NAME = 'e2e-upg';

describe('baton host upgrade', () => {
  const dirs = tempBatonDirs('e2e-upg');
  const env = batonEnv(dirs);
  const xmlFile = path.join(dirs.root, `${NAME}.xml`);
  const active = (): ActiveRecord => {
    const record = readRuntimeRecord(dirs, NAME);
    if (!record || record.state === 'shut off') throw new Error(`${NAME} is not recorded as active: ${JSON.stringify(record)}`);
    return record;
  };

  beforeAll(async () => {
    if (skipReason) return;
    ensureDistBuilt();
    fs.mkdirSync(dirs.root, { recursive: true });
    fs.writeFileSync(xmlFile, guestDomainXml({ name: NAME, cmdline: `echo ip=${GUEST_IP}/24`, nic: { tap: TAP, mac: '52:54:00:e2:e1:07', netns: NETNS, hostAddress: `${SUBNET}.1/24` } }));
    expect((await baton(['vm', 'define', xmlFile], env)).status).toBe(0);
    expect((await baton(['vm', 'start', NAME], env)).status).toBe(0);
    await waitFor('the guest network up', () => (pingFrom(NETNS, GUEST_IP, 1) ? true : undefined), 30_000);
  }, 120_000);

  afterAll(async () => {
    if (!skipReason) await cleanUp(dirs, env, [NAME], [NETNS], [TAP]);
    dirs.cleanup();
  }, 60_000);

  it('moves a domain running an older build onto the installed one, and then has nothing to do', async () => {
    if (skipReason) return console.warn(skipReason);
    const before = active();
    // As if the domain had been started by the previous installation.
    writeRuntimeRecord(dirs, { ...before, hypervisorBuild: '0.0.0+previous' });

    const dry = JSON.parse((await baton(['host', 'upgrade', '--dry-run', '--json'], env)).stdout);
    expect(dry.domains).toEqual([expect.objectContaining({ name: NAME, fromBuild: '0.0.0+previous', outcome: 'would-upgrade' })]);
    expect(active().pid).toBe(before.pid);

    const run = await baton(['host', 'upgrade', '--json'], env);
    expect(run.status).toBe(0);
    const result = JSON.parse(run.stdout);
    expect(result.domains).toEqual([expect.objectContaining({ name: NAME, outcome: 'upgraded', oldPid: before.pid, toBuild: before.hypervisorBuild })]);
    const after = active();
    expect(after.pid).not.toBe(before.pid);
    expect(after.hypervisorBuild).toBe(before.hypervisorBuild);
    expect(pingFrom(NETNS, GUEST_IP, 3)).toBe(true);
    console.log(`host upgrade: pause ${result.domains[0].pauseMs} ms, pid ${before.pid} -> ${after.pid}`);

    const again = JSON.parse((await baton(['host', 'upgrade', '--json'], env)).stdout);
    expect(again.domains).toEqual([]);
    expect(again.upToDate).toEqual([NAME]);
  }, 120_000);
});

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readRuntimeRecord } from '../../src/domain/runtime';
import { tempBatonDirs } from '../domain/helpers';
import { baton, batonEnv, REPO } from '../cli/helpers';
import { cleanUp, e2eSkipReason, ensureDistBuilt, guestDomainXml, linkExistsIn, pingFrom, READY_LINE, TEST_GUEST_ELF, waitFor } from './helpers';

/**
 * The domain lifecycle as a user drives it: `node bin/run.js vm ...` subprocesses, a real
 * baton-hv running the ring-3 test guest, its TAP's host end in a network namespace this run
 * creates (unique names per run), state/run/log directories in a temp dir.
 */
const skipReason = e2eSkipReason();
const RUN = process.pid.toString(36);
const NETNS = `bt-e2e-${process.pid}`;
const TAP = `bt-e${RUN}a`;
const SUBNET = `10.99.${50 + (process.pid % 150)}`;
const GUEST_IP = `${SUBNET}.2`;

describe('baton vm lifecycle (real CLI, real guest)', () => {
  const dirs = tempBatonDirs('e2e');
  const env = batonEnv(dirs);
  const names = ['e2e-echo', 'e2e-twin', 'e2e-counter', 'e2e-stubborn'];
  const xmlFile = (name: string): string => path.join(dirs.root, `${name}.xml`);
  const echoXml = guestDomainXml({
    name: 'e2e-echo',
    cmdline: `echo ip=${GUEST_IP}/24`,
    nic: { tap: TAP, mac: '52:54:00:e2:e0:02', netns: NETNS, hostAddress: `${SUBNET}.1/24` },
  });
  // What `--json` prints: a command's result, or {error: {code, message, ...}}.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each command has its own shape; the assertions check it
  const json = async (args: string[]): Promise<any> => JSON.parse((await baton([...args, '--json'], env)).stdout);

  beforeAll(() => {
    if (skipReason) return;
    ensureDistBuilt();
    fs.mkdirSync(dirs.root, { recursive: true });
    fs.writeFileSync(xmlFile('e2e-echo'), echoXml);
  }, 120_000);

  afterAll(async () => {
    if (!skipReason) await cleanUp(dirs, env, names, [NETNS], [TAP]);
    dirs.cleanup();
  }, 60_000);

  const serialLog = (name: string): string => {
    try {
      return fs.readFileSync(path.join(dirs.logDir, `${name}.serial.log`), 'latin1');
    } catch {
      return '';
    }
  };

  it('lists the lifecycle commands in help, with examples', async () => {
    if (skipReason) return console.warn(skipReason);
    const topic = await baton(['vm', '--help'], env);
    for (const cmd of ['start', 'destroy', 'shutdown', 'suspend', 'resume', 'console']) expect(topic.stdout).toContain(`vm ${cmd}`);
    const shutdown = await baton(['vm', 'shutdown', '--help'], env);
    expect(shutdown.stdout).toContain('$ baton vm shutdown demo --timeout 30 --force');
  });

  it('define → start → ready line → ping → suspend → resume → shutdown → shut off → undefine', async () => {
    if (skipReason) return console.warn(skipReason);
    expect((await baton(['vm', 'define', xmlFile('e2e-echo')], env)).status).toBe(0);

    const startedAt = Date.now();
    const started = await baton(['vm', 'start', 'e2e-echo', '--json'], env);
    expect(started.stderr).toBe('');
    const start = JSON.parse(started.stdout);
    expect(start).toMatchObject({ name: 'e2e-echo', id: 1, state: 'running', hypervisorBuild: expect.stringMatching(/^\d+\.\d+\.\d+\+[0-9a-f]{12}$/) });
    await waitFor('the ready line in the serial log', () => (serialLog('e2e-echo').includes(READY_LINE) ? true : undefined));
    await waitFor('the guest network up', () => (serialLog('e2e-echo').includes(`ip ${GUEST_IP}`) ? true : undefined));
    console.log(`e2e: vm start → "${READY_LINE}" in ${Date.now() - startedAt} ms (CLI process included; start itself reported ${start.startupMs} ms)`);

    const record = readRuntimeRecord(dirs, 'e2e-echo');
    expect(record).toMatchObject({ state: 'running', reason: 'booted', pid: start.pid });
    expect((await baton(['vm', 'list'], env)).stdout).toContain(' 1    e2e-echo   running');
    // The host end of the TAP lives in our namespace, not in the root one.
    expect(linkExistsIn(NETNS, TAP)).toBe(true);
    expect(linkExistsIn(undefined, TAP)).toBe(false);
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);

    expect((await baton(['vm', 'suspend', 'e2e-echo'], env)).stdout).toBe("Domain 'e2e-echo' suspended\n");
    expect((await baton(['vm', 'domstate', 'e2e-echo', '--reason'], env)).stdout).toBe('paused (user)\n');
    expect(pingFrom(NETNS, GUEST_IP, 1)).toBe(false);
    expect((await baton(['vm', 'resume', 'e2e-echo'], env)).stdout).toBe("Domain 'e2e-echo' resumed\n");
    expect(await json(['vm', 'domstate', 'e2e-echo'])).toEqual({ name: 'e2e-echo', state: 'running', reason: 'unpaused', id: 1 });
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);

    const shutdown = await json(['vm', 'shutdown', 'e2e-echo', '--timeout', '30']);
    expect(shutdown).toMatchObject({ name: 'e2e-echo', outcome: 'shutdown', guestShutdownEvent: true });
    expect(await json(['vm', 'list', '--all'])).toEqual([expect.objectContaining({ name: 'e2e-echo', id: null, state: 'shut off', reason: 'shutdown' })]);
    expect((await baton(['vm', 'domstate', 'e2e-echo', '--reason'], env)).stdout).toBe('shut off (shutdown)\n');
    // The TAP went with its hypervisor; the namespace stays for the next start.
    expect(linkExistsIn(NETNS, TAP)).toBe(false);
    expect(fs.existsSync(`/run/netns/${NETNS}`)).toBe(true);
    expect(fs.readFileSync(path.join(dirs.logDir, 'e2e-echo.log'), 'utf8')).toMatch(/shut down after \d+ ms/);

    expect((await baton(['vm', 'undefine', 'e2e-echo'], env)).status).toBe(0);
    expect(await json(['vm', 'list', '--all'])).toEqual([]);
  }, 120_000);

  it('refuses what virsh refuses, and shows a kill -9 of the hypervisor as shut off (crashed)', async () => {
    if (skipReason) return console.warn(skipReason);
    expect((await baton(['vm', 'define', xmlFile('e2e-echo')], env)).status).toBe(0);
    const start = await json(['vm', 'start', 'e2e-echo']);
    expect(start.state).toBe('running');

    const again = await baton(['vm', 'start', 'e2e-echo'], env);
    expect(again).toMatchObject({ status: 1, stderr: "error: Domain 'e2e-echo' is already active\n" });
    expect((await json(['vm', 'start', 'e2e-echo'])).error.code).toBe('EDOMAINACTIVE');
    expect((await json(['vm', 'undefine', 'e2e-echo'])).error).toMatchObject({ code: 'EDOMAINACTIVE', state: 'running' });

    // Two domains on one TAP: define refuses; a definition slipped into the state dir by hand is refused at start.
    const twin = echoXml.replace('<name>e2e-echo</name>', '<name>e2e-twin</name>').replace('52:54:00:e2:e0:02', '52:54:00:e2:e0:03');
    fs.writeFileSync(xmlFile('e2e-twin'), twin);
    expect((await json(['vm', 'define', xmlFile('e2e-twin')])).error.code).toBe('ETAPINUSE');
    const uuid = '8a1f0c52-3d4e-4b6f-9a7c-1e2d3c4b5a69';
    fs.writeFileSync(path.join(dirs.stateDir, 'e2e-twin.xml'), twin.replace('</name>', `</name><uuid>${uuid}</uuid>`));
    const twinStart = await json(['vm', 'start', 'e2e-twin']);
    expect(twinStart.error).toMatchObject({ code: 'ETAPINUSE', tap: TAP, domain: 'e2e-echo' });
    expect(pingFrom(NETNS, GUEST_IP, 1)).toBe(true);
    fs.rmSync(path.join(dirs.stateDir, 'e2e-twin.xml'));

    process.kill(start.pid, 'SIGKILL');
    expect((await baton(['vm', 'domstate', 'e2e-echo', '--reason'], env)).stdout).toBe('shut off (crashed)\n');
    // The keeper's reaper records the end for good (list reads the record).
    await waitFor('the reaper to record the crash', () => (readRuntimeRecord(dirs, 'e2e-echo')?.state === 'shut off' ? true : undefined));
    expect(readRuntimeRecord(dirs, 'e2e-echo')).toMatchObject({ state: 'shut off', reason: 'crashed' });
    expect((await baton(['vm', 'list', '--all'], env)).stdout).toContain(' -    e2e-echo   shut off');
    expect(fs.readFileSync(path.join(dirs.logDir, 'e2e-echo.log'), 'utf8')).toContain('exited with status 137 (signal 9)');
    expect((await json(['vm', 'destroy', 'e2e-echo'])).error.code).toBe('EDOMAINNOTACTIVE');

    // The namespace kept from before: start again, destroy, and the domain says why it stopped.
    const restart = await json(['vm', 'start', 'e2e-echo']);
    expect(restart.state).toBe('running');
    await waitFor('the guest network up again', () => (serialLog('e2e-echo').includes(`ip ${GUEST_IP}`) ? true : undefined));
    expect(pingFrom(NETNS, GUEST_IP)).toBe(true);
    expect(await json(['vm', 'destroy', 'e2e-echo'])).toMatchObject({ name: 'e2e-echo', stoppedBy: 'quit' });
    expect((await baton(['vm', 'domstate', 'e2e-echo', '--reason'], env)).stdout).toBe('shut off (destroyed)\n');
    expect((await baton(['vm', 'undefine', 'e2e-echo'], env)).status).toBe(0);
  }, 120_000);

  it('vm console shows the serial output and Ctrl-] leaves; the domain keeps running', async () => {
    if (skipReason) return console.warn(skipReason);
    fs.writeFileSync(xmlFile('e2e-counter'), guestDomainXml({ name: 'e2e-counter', cmdline: 'counter' }));
    expect((await baton(['vm', 'define', xmlFile('e2e-counter')], env)).status).toBe(0);
    expect((await json(['vm', 'start', 'e2e-counter'])).state).toBe('running');

    const consoleProcess = spawn(process.execPath, [path.join(REPO, 'bin/run.js'), 'vm', 'console', 'e2e-counter'], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let errors = '';
    consoleProcess.stdout.on('data', (d: Buffer) => (output += d.toString('latin1')));
    consoleProcess.stderr.on('data', (d: Buffer) => (errors += d.toString()));
    const exited = new Promise<number | null>((resolve) => consoleProcess.on('exit', (code) => resolve(code)));
    // The counter guest prints a tick line every few ms: they must stream through the console.
    await waitFor('tick lines on the console', () => ((output.match(/^tick \d+ tsc \d+\n/gm) ?? []).length >= 2 ? true : undefined));
    consoleProcess.stdin.write(Buffer.from([0x1d]));
    expect(await exited).toBe(0);
    expect(errors).toContain("Connected to domain 'e2e-counter'\nEscape character is ^] (Ctrl + ])");
    expect((await baton(['vm', 'domstate', 'e2e-counter'], env)).stdout).toBe('running\n');

    // shutdown --timeout 0 only asks (plain virsh shutdown); the keeper's reaper records the power-off.
    expect(await json(['vm', 'shutdown', 'e2e-counter', '--timeout', '0'])).toMatchObject({ outcome: 'requested' });
    await waitFor('the reaper to record the power-off', () => (readRuntimeRecord(dirs, 'e2e-counter')?.state === 'shut off' ? true : undefined));
    expect((await baton(['vm', 'domstate', 'e2e-counter', '--reason'], env)).stdout).toBe('shut off (shutdown)\n');
  }, 120_000);

  it('shutdown of a guest that does not answer the power button: times out, leaves it running; --force destroys it', async () => {
    if (skipReason) return console.warn(skipReason);
    // Debian's kernel early in its boot (ring 0 is emulated here: it spends minutes there) has
    // no ACPI or keyboard driver yet: the power button goes unanswered.
    const image = path.join(os.homedir(), '.cache/baton/guest-image/current/bzImage');
    if (!fs.existsSync(image)) return console.warn(`skipping the shutdown-timeout test: ${image} is missing (npm run setup builds it)`);
    const xml = guestDomainXml({ name: 'e2e-stubborn', cmdline: 'console=ttyS0 earlyprintk=serial,ttyS0 noxsave nokaslr' }).replace(TEST_GUEST_ELF, image);
    fs.writeFileSync(xmlFile('e2e-stubborn'), xml);
    expect((await baton(['vm', 'define', xmlFile('e2e-stubborn')], env)).status).toBe(0);
    expect((await json(['vm', 'start', 'e2e-stubborn'])).state).toBe('running');

    const timedOut = await baton(['vm', 'shutdown', 'e2e-stubborn', '--timeout', '2'], env);
    expect(timedOut.status).toBe(1);
    expect(timedOut.stderr).toContain("did not shut down within 2 s and is still running");
    expect((await baton(['vm', 'domstate', 'e2e-stubborn'], env)).stdout).toBe('running\n');
    expect(await json(['vm', 'shutdown', 'e2e-stubborn', '--timeout', '1', '--force'])).toMatchObject({ outcome: 'destroyed', guestShutdownEvent: false });
    expect((await baton(['vm', 'domstate', 'e2e-stubborn', '--reason'], env)).stdout).toBe('shut off (destroyed)\n');
  }, 120_000);
});

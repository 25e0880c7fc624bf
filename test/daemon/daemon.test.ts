import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import dbus from 'dbus-next';
import { ActiveRecord, readRuntimeRecord } from '../../src/domain/runtime';
import { tempBatonDirs } from '../domain/helpers';
import { baton, batonEnv, REPO } from '../cli/helpers';
import { cleanUp, e2eSkipReason, ensureDistBuilt, guestDomainXml, waitFor } from '../e2e/helpers';

/**
 * `baton host daemon` on a private, real dbus-daemon: a dbus-next client subscribes to
 * DomainEvent while the real CLI (and the daemon's own methods) drive a real guest (the
 * ring-3 test guest in counter mode, no NIC) through its lifecycle. Every expected signal is
 * awaited in order with a generous timeout; nothing depends on exact timing.
 */
const BUS_NAME = 'dev.baton.Manager1';
const OBJECT_PATH = '/dev/baton/Manager1';
const INTERFACE = 'dev.baton.Manager1';
const DOMAIN = 'dbus-counter';
const SIGNAL_TIMEOUT_MS = 15_000;

function daemonSkipReason(): string | undefined {
  const e2e = e2eSkipReason();
  if (e2e) return e2e.replace('end-to-end tests', 'D-Bus daemon tests');
  if (spawnSync('dbus-daemon', ['--version'], { stdio: 'ignore' }).status !== 0) return 'D-Bus daemon tests: dbus-daemon is not installed (apt-get install dbus-daemon)';
  return undefined;
}
const skipReason = daemonSkipReason();

interface ReceivedEvent {
  name: string;
  uuid: string;
  event: string;
  detail: string;
}

/** Resolves with the first line of `stream` output that matches, or rejects after `timeoutMs`. */
function waitForOutput(child: ChildProcess, stream: 'stdout' | 'stderr', pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern} on ${stream}; got: ${text}`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      const match = text.match(pattern);
      if (match) {
        clearTimeout(timer);
        child[stream]!.off('data', onData);
        resolve(match);
      }
    };
    child[stream]!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`process exited (${code}) before printing ${pattern}; output: ${text}`));
    });
  });
}

describe('baton host daemon (real dbus-daemon, real CLI, real guest)', () => {
  const dirs = tempBatonDirs('dbus');
  const env = batonEnv(dirs);
  const busSocket = path.join(dirs.root, 'bus');
  const xmlFile = path.join(dirs.root, `${DOMAIN}.xml`);
  let busDaemon: ChildProcess | undefined;
  let batonDaemon: ChildProcess | undefined;
  let batonDaemonStderr = '';
  let client: dbus.MessageBus | undefined;
  let manager: dbus.ClientInterface;
  const events: ReceivedEvent[] = [];
  let consumed = 0;

  /** The next signal not yet looked at; it must be `event` (and `detail`, when given). */
  const nextEvent = async (event: string, detail?: string | RegExp): Promise<ReceivedEvent> => {
    const received = await waitFor(`DomainEvent '${event}' (signals so far: ${JSON.stringify(events.slice(consumed))})`, () => events[consumed], SIGNAL_TIMEOUT_MS);
    consumed += 1;
    expect(received).toMatchObject({ name: DOMAIN, event });
    if (typeof detail === 'string') expect(received.detail).toBe(detail);
    else if (detail) expect(received.detail).toMatch(detail);
    return received;
  };
  const listDomains = async (): Promise<string[][]> => (await manager.ListDomains()) as string[][];
  const stateOf = async (name: string): Promise<[string, string] | undefined> => {
    const row = (await listDomains()).find((r) => r[0] === name);
    return row ? [row[2], row[3]] : undefined;
  };
  const cli = async (...args: string[]): Promise<void> => {
    const run = await baton(args, env);
    if (run.status !== 0) throw new Error(`baton ${args.join(' ')} failed (${run.status}): ${run.stderr}`);
  };

  beforeAll(async () => {
    if (skipReason) return;
    ensureDistBuilt();
    if (!fs.existsSync(path.join(REPO, 'dist/commands/host/daemon.js'))) throw new Error('dist/commands/host/daemon.js is missing: run npx tsc -p tsconfig.build.json');
    fs.mkdirSync(dirs.root, { recursive: true });
    fs.writeFileSync(xmlFile, guestDomainXml({ name: DOMAIN, cmdline: 'counter' }));

    busDaemon = spawn('dbus-daemon', ['--session', '--nofork', '--print-address', `--address=unix:path=${busSocket}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    const address = (await waitForOutput(busDaemon, 'stdout', /^(unix:\S+)\n/m, 10_000))[1];

    batonDaemon = spawn(process.execPath, [path.join(REPO, 'bin/run.js'), 'host', 'daemon', '--bus', 'session', '--address', address], {
      cwd: REPO,
      env: { ...process.env, ...env, BATON_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    batonDaemon.stderr!.on('data', (c: Buffer) => (batonDaemonStderr += c.toString()));
    await waitForOutput(batonDaemon, 'stderr', /owning dev\.baton\.Manager1/, 30_000);

    client = dbus.sessionBus({ busAddress: address });
    const proxy = await client.getProxyObject(BUS_NAME, OBJECT_PATH);
    manager = proxy.getInterface(INTERFACE);
    manager.on('DomainEvent', (name: string, uuid: string, event: string, detail: string) => events.push({ name, uuid, event, detail }));
  }, 120_000);

  afterAll(async () => {
    if (!skipReason) await cleanUp(dirs, env, [DOMAIN], [], []);
    client?.disconnect();
    for (const child of [batonDaemon, busDaemon]) {
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((resolve) => child.once('exit', resolve));
      }
    }
    dirs.cleanup();
  }, 60_000);

  it('introspects as dev.baton.Manager1 with the lifecycle methods and DomainEvent', async () => {
    if (skipReason) return console.warn(skipReason);
    const proxy = await client!.getProxyObject(BUS_NAME, OBJECT_PATH);
    expect(Object.keys(proxy.interfaces)).toContain(INTERFACE);
    for (const method of ['ListDomains', 'Start', 'Shutdown', 'Destroy', 'Suspend', 'Resume', 'Migrate']) expect(typeof manager[method]).toBe('function');
    expect(await listDomains()).toEqual([]);
  });

  it('signals every change the CLI makes: defined, started, suspended, resumed, stopped (destroyed)', async () => {
    if (skipReason) return console.warn(skipReason);
    await cli('vm', 'define', xmlFile);
    const defined = await nextEvent('defined');
    expect(defined.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(await stateOf(DOMAIN)).toEqual(['shut off', 'unknown']);

    await cli('vm', 'start', DOMAIN);
    await nextEvent('started', 'booted');
    expect(await stateOf(DOMAIN)).toEqual(['running', 'booted']);

    await cli('vm', 'suspend', DOMAIN);
    await nextEvent('suspended', 'user');
    await cli('vm', 'resume', DOMAIN);
    await nextEvent('resumed', 'unpaused');

    const before = readRuntimeRecord(dirs, DOMAIN) as ActiveRecord;
    await cli('vm', 'migrate', DOMAIN, '--local');
    const after = readRuntimeRecord(dirs, DOMAIN) as ActiveRecord;
    // The CLI's migration result is not on disk; the daemon can only name the processes.
    await nextEvent('migrated', `pid ${before.pid} -> ${after.pid}`);

    await cli('vm', 'destroy', DOMAIN);
    await nextEvent('stopped', 'destroyed');
    expect(await stateOf(DOMAIN)).toEqual(['shut off', 'destroyed']);
  }, 120_000);

  it('signals stopped (crashed) when the hypervisor dies without a stop command', async () => {
    if (skipReason) return console.warn(skipReason);
    await cli('vm', 'start', DOMAIN);
    await nextEvent('started', 'booted');
    const record = readRuntimeRecord(dirs, DOMAIN) as ActiveRecord;
    process.kill(record.pid, 'SIGKILL');
    await nextEvent('stopped', 'crashed');
    expect(await stateOf(DOMAIN)).toEqual(['shut off', 'crashed']);
  }, 120_000);

  it('drives the domain through its own methods: Start, Suspend, Resume, Migrate, Destroy', async () => {
    if (skipReason) return console.warn(skipReason);
    await manager.Start(DOMAIN);
    await nextEvent('started', 'booted');
    expect(await stateOf(DOMAIN)).toEqual(['running', 'booted']);

    await manager.Suspend(DOMAIN);
    expect((await stateOf(DOMAIN))?.[0]).toBe('paused');
    await nextEvent('suspended', 'user');
    await manager.Resume(DOMAIN);
    expect((await stateOf(DOMAIN))?.[0]).toBe('running');
    await nextEvent('resumed');

    // A NIC-less domain migrates with whatever policy it is asked for.
    const [pauseMs, newPid] = (await manager.Migrate(DOMAIN, 'local-fd')) as [number, number];
    expect(newPid).toBeGreaterThan(0);
    expect(pauseMs).toBeGreaterThanOrEqual(0);
    const migrated = await nextEvent('migrated', /^policy=local-fd pause_ms=\d+/);
    console.log(`D-Bus Migrate: pause ${pauseMs} ms, new pid ${newPid}; signal detail '${migrated.detail}'`);
    expect(await stateOf(DOMAIN)).toEqual(['running', 'migrated']);

    await manager.Destroy(DOMAIN);
    await nextEvent('stopped', 'destroyed');
    expect(await stateOf(DOMAIN)).toEqual(['shut off', 'destroyed']);
  }, 180_000);

  it('returns BatonErrors as dev.baton.Error.<CODE> with the message', async () => {
    if (skipReason) return console.warn(skipReason);
    await expect(manager.Suspend('no-such-domain')).rejects.toMatchObject({ type: 'dev.baton.Error.ENODOMAIN', text: expect.stringContaining("domain 'no-such-domain' is not defined") });
    await expect(manager.Migrate(DOMAIN, 'teleport')).rejects.toMatchObject({ type: 'dev.baton.Error.EUSAGE' });
  });

  it('signals undefined when the CLI removes the definition', async () => {
    if (skipReason) return console.warn(skipReason);
    await cli('vm', 'undefine', DOMAIN);
    await nextEvent('undefined');
    expect(await listDomains()).toEqual([]);
    expect(events.slice(consumed)).toEqual([]);
  });

  it('releases the name and exits 0 on SIGTERM', async () => {
    if (skipReason) return console.warn(skipReason);
    const exited = new Promise<number | null>((resolve) => batonDaemon!.once('exit', (code) => resolve(code)));
    batonDaemon!.kill('SIGTERM');
    expect(await exited).toBe(0);
    const dbusProxy = await client!.getProxyObject('org.freedesktop.DBus', '/org/freedesktop/DBus');
    const bus = dbusProxy.getInterface('org.freedesktop.DBus');
    expect(await bus.NameHasOwner(BUS_NAME)).toBe(false);
    if (batonDaemonStderr.includes('error')) console.warn(`daemon stderr:\n${batonDaemonStderr}`);
  }, 30_000);
});

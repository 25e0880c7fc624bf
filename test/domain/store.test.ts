import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../../src/util/errors';
import { withDirectoryLock } from '../../src/domain/lock';
import { batonPaths, domainFiles } from '../../src/domain/paths';
import { ActiveRecord, domainState, markShutoff, nextDomainId, processStartTime, writeRuntimeRecord } from '../../src/domain/runtime';
import { DomainStore, listDomains } from '../../src/domain/store';
import { parseDomainXml, serializeDomainXml } from '../../src/domain/xml';
import { exited, tempBatonDirs } from './helpers';

function domainXml(name: string, tap: string, uuid?: string): string {
  return `<domain type='kvm'><name>${name}</name>${uuid ? `<uuid>${uuid}</uuid>` : ''}<memory unit='MiB'>128</memory>
<os><type>hvm</type><kernel>/k</kernel></os><devices><interface type='ethernet'><target dev='${tap}'/></interface></devices></domain>`;
}

async function refusal(promise: Promise<unknown>): Promise<BatonError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(BatonError);
    return err as BatonError;
  }
  throw new Error('expected a BatonError, but the call succeeded');
}

/** A real process to stand in for a hypervisor (the state logic only looks at its pid). */
function startStandIn(): ChildProcess {
  return spawn('sleep', ['600'], { stdio: 'ignore' });
}


function activeRecord(name: string, uuid: string, pid: number, overrides: Partial<ActiveRecord> = {}): ActiveRecord {
  return {
    name,
    uuid,
    id: 1,
    state: 'running',
    reason: 'booted',
    pid,
    pidStartTime: processStartTime(pid) ?? 'none',
    monitorSocket: '/nonexistent/monitor',
    consoleSocket: '/nonexistent/console',
    hypervisorBuild: 'test',
    startedAt: new Date().toISOString(),
    ...overrides,
  };
}

describe('paths', () => {
  it('default to /var/lib, /run and /var/log, and follow BATON_*_DIR', () => {
    expect(batonPaths({})).toEqual({ stateDir: '/var/lib/baton', runDir: '/run/baton', logDir: '/var/log/baton' });
    expect(batonPaths({ BATON_STATE_DIR: '/tmp/s', BATON_RUN_DIR: '/tmp/r', BATON_LOG_DIR: '/tmp/l' })).toEqual({ stateDir: '/tmp/s', runDir: '/tmp/r', logDir: '/tmp/l' });
  });
});

describe('DomainStore', () => {
  const dirs = tempBatonDirs('store');
  const store = new DomainStore(dirs);
  const children: ChildProcess[] = [];
  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.all(children.map(exited));
    dirs.cleanup();
  });

  it('lists nothing before the state directory exists', () => {
    expect(store.list()).toEqual([]);
    expect(fs.existsSync(dirs.stateDir)).toBe(false);
  });

  it('defines, finds by name or UUID (any case), dumps the stored bytes, and undefines', async () => {
    const { domain, replaced } = await store.define(parseDomainXml(domainXml('alpha', 'bt-alpha0')));
    expect(replaced).toBe(false);
    const file = domainFiles(dirs, 'alpha').definition;
    expect(fs.readFileSync(file, 'utf8')).toBe(serializeDomainXml(domain));
    expect(store.get('alpha')).toEqual(domain);
    expect(store.get(domain.uuid.toUpperCase())).toEqual(domain);
    expect(store.dumpXml(domain.uuid)).toBe(fs.readFileSync(file, 'utf8'));
    expect(store.list().map((d) => d.name)).toEqual(['alpha']);
    expect((await store.undefine(domain.uuid)).name).toBe('alpha');
    expect(fs.existsSync(file)).toBe(false);
    expect((await refusal(Promise.resolve().then(() => store.get('alpha')))).code).toBe('ENODOMAIN');
  });

  it('never resolves a path-like name outside the state directory', () => {
    fs.mkdirSync(dirs.stateDir, { recursive: true });
    fs.writeFileSync(path.join(dirs.root, 'outside.xml'), serializeDomainXml(parseDomainXml(domainXml('outside', 'bt-out0'))));
    expect(store.find('../outside')).toBeUndefined();
    expect(store.find('.lock')).toBeUndefined();
  });

  it('redefines with the same name and UUID; refuses the same name with another UUID', async () => {
    const first = (await store.define(parseDomainXml(domainXml('beta', 'bt-beta0')))).domain;
    const again = await store.define(parseDomainXml(domainXml('beta', 'bt-beta1', first.uuid)));
    expect(again.replaced).toBe(true);
    expect(store.get('beta').interfaces[0].tapName).toBe('bt-beta1');
    const err = await refusal(store.define(parseDomainXml(domainXml('beta', 'bt-beta2'))));
    expect(err.code).toBe('EDOMAINEXISTS');
    expect(err.message).toContain(first.uuid);
  });

  it('refuses a TAP that another domain uses, but not a domain keeping its own TAP', async () => {
    const err = await refusal(store.define(parseDomainXml(domainXml('gamma', 'bt-beta1'))));
    expect(err.code).toBe('ETAPINUSE');
    expect(err.message).toContain("'beta'");
    const beta = store.get('beta');
    expect((await store.define(beta)).replaced).toBe(true);
  });

  it('skips an unreadable stored file in list() (with a warning) but names it on direct lookup', async () => {
    fs.writeFileSync(path.join(dirs.stateDir, 'broken.xml'), '<domain type="kvm"><name>broken</name>');
    expect(store.list().map((d) => d.name)).not.toContain('broken');
    const err = await refusal(Promise.resolve().then(() => store.get('broken')));
    expect(err.code).toBe('ESTOREIO');
    expect(err.message).toContain('broken.xml');
    fs.rmSync(path.join(dirs.stateDir, 'broken.xml'));
  });

  it('reports running from a live record, shut off (crashed) once the process dies, and refuses undefine while running', async () => {
    const domain = (await store.define(parseDomainXml(domainXml('delta', 'bt-delta0')))).domain;
    expect(store.state('delta')).toEqual({ state: 'shut off', reason: 'unknown' });

    const standIn = startStandIn();
    children.push(standIn);
    writeRuntimeRecord(dirs, activeRecord('delta', domain.uuid, standIn.pid!, { id: 3 }));
    expect(store.state('delta')).toMatchObject({ state: 'running', reason: 'booted', id: 3 });
    expect(listDomains(store)).toEqual([{ id: 3, name: 'delta', uuid: domain.uuid, state: 'running', reason: 'booted' }]);
    expect(nextDomainId(dirs)).toBe(4);

    const err = await refusal(store.undefine('delta'));
    expect(err.code).toBe('EDOMAINACTIVE');
    expect(err.message).toContain('running');
    expect(fs.existsSync(domainFiles(dirs, 'delta').definition)).toBe(true);

    standIn.kill('SIGKILL');
    await exited(standIn);
    expect(store.state('delta')).toEqual({ state: 'shut off', reason: 'crashed' });
    expect(listDomains(store)).toEqual([]);
    expect(listDomains(store, { all: true }).find((e) => e.name === 'delta')).toEqual({ id: null, name: 'delta', uuid: domain.uuid, state: 'shut off', reason: 'crashed' });
    expect(nextDomainId(dirs)).toBe(1);
    await store.undefine('delta');
    expect(fs.existsSync(domainFiles(dirs, 'delta').runtime)).toBe(false);
  });

  it('does not take a reused pid for the hypervisor (start time differs)', () => {
    // This test process is certainly alive; a record with its pid but another start time
    // is what a reused pid looks like.
    writeRuntimeRecord(dirs, activeRecord('epsilon', 'e0000000-0000-4000-8000-000000000000', process.pid, { pidStartTime: '1' }));
    expect(domainState(dirs, 'epsilon')).toEqual({ state: 'shut off', reason: 'crashed' });
    writeRuntimeRecord(dirs, activeRecord('epsilon', 'e0000000-0000-4000-8000-000000000000', process.pid, { state: 'paused', reason: 'user' }));
    expect(domainState(dirs, 'epsilon')).toMatchObject({ state: 'paused', reason: 'user' });
    markShutoff(dirs, 'epsilon', 'e0000000-0000-4000-8000-000000000000', 'shutdown');
    expect(domainState(dirs, 'epsilon')).toEqual({ state: 'shut off', reason: 'shutdown' });
  });

  it('serializes concurrent defines: of 6 domains racing for one TAP exactly one wins', async () => {
    const racers = Array.from({ length: 6 }, (_, i) => store.define(parseDomainXml(domainXml(`race${i}`, 'bt-race0'))));
    const results = await Promise.allSettled(racers);
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as BatonError).code).toBe('ETAPINUSE');
    expect(store.list().filter((d) => d.interfaces.some((n) => n.tapName === 'bt-race0'))).toHaveLength(1);
  });
});

describe('withDirectoryLock', () => {
  const dirs = tempBatonDirs('lock');
  afterAll(() => dirs.cleanup());

  /** Holds the lock the way baton does: flock(1) running `cat` until its stdin closes. */
  async function holdLock(): Promise<ChildProcess> {
    fs.mkdirSync(dirs.stateDir, { recursive: true });
    const holder = spawn('flock', [path.join(dirs.stateDir, '.lock'), 'sh', '-c', 'echo locked; exec cat'], { stdio: ['pipe', 'pipe', 'ignore'] });
    await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
    return holder;
  }

  it('waits for the holder, then runs', async () => {
    const holder = await holdLock();
    let ran = false;
    const waiter = withDirectoryLock(dirs.stateDir, () => (ran = true), 20_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(ran).toBe(false);
    holder.stdin!.end();
    await waiter;
    expect(ran).toBe(true);
    await exited(holder);
  });

  it('times out with ESTORELOCKED while someone else holds it', async () => {
    const holder = await holdLock();
    try {
      const err = await refusal(withDirectoryLock(dirs.stateDir, () => 'never', 1000));
      expect(err.code).toBe('ESTORELOCKED');
      expect(err.message).toContain('.lock');
    } finally {
      holder.stdin!.end();
      await exited(holder);
    }
  });
});

import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { writeRuntimeRecord, processStartTime } from '../../src/domain/runtime';
import { exited, snapshotDir, tempBatonDirs, virtXmlValidate } from '../domain/helpers';
import { baton, batonEnv, ensureDistBuilt, REPO } from './helpers';

/**
 * The `baton vm` commands as a user runs them: `node bin/run.js` subprocesses against dist/,
 * with the state, run and log directories in a temp dir.
 */
const DEMO_UUID = '5f0c9a3e-7b1d-4c2a-9e61-d3b8a4f2c701';


describe('baton vm (subprocess)', () => {
  const dirs = tempBatonDirs('cli');
  const env = batonEnv(dirs);
  /** A copy of the repo's domains/ and the one file demo.xml points at, so the test needs no guest build. */
  const checkout = path.join(dirs.root, 'checkout');
  const demoXml = path.join(checkout, 'domains/demo.xml');
  const children: ChildProcess[] = [];

  beforeAll(() => {
    ensureDistBuilt();
    fs.mkdirSync(path.join(checkout, 'domains'), { recursive: true });
    fs.copyFileSync(path.join(REPO, 'domains/demo.xml'), demoXml);
    fs.mkdirSync(path.join(checkout, 'test/guest/build'), { recursive: true });
    fs.writeFileSync(path.join(checkout, 'test/guest/build/testguest.elf'), 'stand-in kernel\n');
  }, 120_000);
  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.all(children.map(exited));
    dirs.cleanup();
  });

  it('has help with examples for every command', async () => {
    const topic = await baton(['vm', '--help'], env);
    expect(topic.status).toBe(0);
    for (const cmd of ['define', 'undefine', 'list', 'dumpxml', 'domstate']) expect(topic.stdout).toContain(`vm ${cmd}`);
    expect(topic.stdout).not.toContain('base');
    const define = await baton(['vm', 'define', '--help'], env);
    expect(define.stdout).toContain('EXAMPLES');
    expect(define.stdout).toContain('$ baton vm define domains/demo.xml');
  });

  it('define → list → dumpxml → define again → dumpxml is stable → domstate → undefine', async () => {
    expect((await baton(['vm', 'list', '--all'], env)).stdout).toBe(' Id   Name   State\n-------------------\n');

    const defined = await baton(['vm', 'define', demoXml], env);
    expect(defined).toEqual({ status: 0, stdout: `Domain 'demo' defined from ${demoXml}\n`, stderr: '' });

    const table = await baton(['vm', 'list', '--all'], env);
    expect(table.stdout.split('\n')).toEqual([' Id   Name   State', '----------------------', ' -    demo   shut off', '']);
    expect((await baton(['vm', 'list'], env)).stdout).not.toContain('demo');
    const json = JSON.parse((await baton(['vm', 'list', '--all', '--json'], env)).stdout);
    expect(json).toEqual([{ id: null, name: 'demo', uuid: DEMO_UUID, state: 'shut off', reason: 'unknown' }]);

    const dump1 = await baton(['vm', 'dumpxml', 'demo'], env);
    expect(dump1.status).toBe(0);
    expect(dump1.stdout).toContain(`<kernel>${path.join(checkout, 'test/guest/build/testguest.elf')}</kernel>`);
    expect(dump1.stdout).toBe(fs.readFileSync(path.join(dirs.stateDir, 'demo.xml'), 'utf8'));
    const validation = virtXmlValidate(dump1.stdout, 'demo-dumpxml');
    if (validation) expect(validation).toEqual({ ok: true, output: expect.stringContaining('validates') });

    const dumped = path.join(dirs.root, 'dumped.xml');
    fs.writeFileSync(dumped, dump1.stdout);
    expect((await baton(['vm', 'define', dumped], env)).status).toBe(0);
    const dump2 = await baton(['vm', 'dumpxml', DEMO_UUID], env);
    expect(dump2.stdout).toBe(dump1.stdout);

    expect((await baton(['vm', 'domstate', 'demo'], env)).stdout).toBe('shut off\n');
    expect((await baton(['vm', 'domstate', DEMO_UUID.toUpperCase(), '--reason'], env)).stdout).toBe('shut off (unknown)\n');
    expect(JSON.parse((await baton(['vm', 'domstate', 'demo', '--json'], env)).stdout)).toEqual({ name: 'demo', state: 'shut off', reason: 'unknown', id: null });

    expect(await baton(['vm', 'undefine', 'demo'], env)).toEqual({ status: 0, stdout: "Domain 'demo' has been undefined\n", stderr: '' });
    expect(JSON.parse((await baton(['vm', 'list', '--all', '--json'], env)).stdout)).toEqual([]);
  });

  it('prints errors as "error: ..." with status 1, or as a JSON error object with --json', async () => {
    const missing = await baton(['vm', 'dumpxml', 'nosuch'], env);
    expect(missing).toEqual({ status: 1, stdout: '', stderr: "error: domain 'nosuch' is not defined; 'baton vm list --all' shows the defined domains\n" });
    const missingJson = await baton(['vm', 'domstate', 'nosuch', '--json'], env);
    expect(missingJson.status).toBe(1);
    expect(JSON.parse(missingJson.stdout)).toEqual({ error: { code: 'ENODOMAIN', domain: 'nosuch', message: expect.stringContaining("'nosuch' is not defined") } });

    const usage = await baton(['vm', 'define', '--json'], env);
    expect(usage.status).toBe(1);
    expect(JSON.parse(usage.stdout).error.code).toBe('EUSAGE');

    const bad = await baton(['vm', 'define', path.join(REPO, 'test/domain/bad/device-disk.xml')], env);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^error: \/domain\/devices\/disk: <disk> is not supported by Baton/);
    const unreadable = await baton(['vm', 'define', path.join(dirs.root, 'no-such-file.xml'), '--json'], env);
    expect(JSON.parse(unreadable.stdout).error.code).toBe('EINPUT');
  });

  it('shows a running domain with its Id, refuses to undefine it, and shows it shut off (crashed) after kill -9', async () => {
    expect((await baton(['vm', 'define', demoXml], env)).status).toBe(0);
    const standIn = spawn('sleep', ['600'], { stdio: 'ignore' });
    children.push(standIn);
    writeRuntimeRecord(dirs, {
      name: 'demo',
      uuid: DEMO_UUID,
      id: 1,
      state: 'running',
      reason: 'booted',
      pid: standIn.pid!,
      pidStartTime: processStartTime(standIn.pid!)!,
      monitorSocket: path.join(dirs.runDir, 'demo.monitor'),
      consoleSocket: path.join(dirs.runDir, 'demo.console'),
      hypervisorBuild: 'test',
      startedAt: new Date().toISOString(),
    });
    expect((await baton(['vm', 'list'], env)).stdout).toContain(' 1    demo   running');
    expect((await baton(['vm', 'domstate', 'demo', '--reason'], env)).stdout).toBe('running (booted)\n');
    const refused = await baton(['vm', 'undefine', 'demo', '--json'], env);
    expect(refused.status).toBe(1);
    expect(JSON.parse(refused.stdout).error).toMatchObject({ code: 'EDOMAINACTIVE', state: 'running' });

    standIn.kill('SIGKILL');
    await exited(standIn);
    expect((await baton(['vm', 'list', '--all'], env)).stdout).toContain(' -    demo   shut off');
    expect((await baton(['vm', 'domstate', 'demo', '--reason'], env)).stdout).toBe('shut off (crashed)\n');
    expect((await baton(['vm', 'undefine', 'demo'], env)).status).toBe(0);
  });

  it('serializes concurrent CLI processes: of 4 defines racing for one TAP exactly one wins', async () => {
    const files = [0, 1, 2, 3].map((i) => {
      const file = path.join(checkout, 'domains', `race${i}.xml`);
      fs.writeFileSync(file, fs.readFileSync(demoXml, 'utf8').replace('<name>demo</name>', `<name>race${i}</name>`).replace(/<uuid>.*<\/uuid>/, '').replace(/<mac [^>]*>/, ''));
      return file;
    });
    const results = await Promise.all(files.map((f) => baton(['vm', 'define', f, '--json'], env)));
    expect(results.filter((r) => r.status === 0)).toHaveLength(1);
    for (const r of results.filter((r) => r.status !== 0)) expect(JSON.parse(r.stdout).error.code).toBe('ETAPINUSE');
    const listed = JSON.parse((await baton(['vm', 'list', '--all', '--json'], env)).stdout) as Array<{ name: string }>;
    expect(listed).toHaveLength(1);
    expect((await baton(['vm', 'undefine', listed[0].name], env)).status).toBe(0);
  });

  it('kill -9 of define between writing and renaming leaves the old definition, a working store and a free lock', async () => {
    expect((await baton(['vm', 'define', demoXml], env)).status).toBe(0);
    const before = snapshotDir(dirs.stateDir);
    const changed = path.join(checkout, 'domains/demo-changed.xml');
    fs.writeFileSync(changed, fs.readFileSync(demoXml, 'utf8').replace(/<title>.*<\/title>/, '<title>changed</title>'));

    const writer = spawn(process.execPath, [path.join(REPO, 'bin/run.js'), 'vm', 'define', changed], {
      cwd: REPO,
      env: { ...process.env, ...env, BATON_TEST_PAUSE_BEFORE_RENAME_MS: '600000' },
      stdio: 'ignore',
    });
    children.push(writer);
    // Wait until the new definition sits fsync'ed in its temp file, then kill.
    const deadline = Date.now() + 60_000;
    let temp: string | undefined;
    while (!temp && Date.now() < deadline) {
      temp = fs.readdirSync(dirs.stateDir).find((n) => n.startsWith('.demo.xml.tmp-'));
      if (!temp) await new Promise((r) => setTimeout(r, 50));
    }
    expect(temp).toBeDefined();
    expect(fs.readFileSync(path.join(dirs.stateDir, temp!), 'utf8')).toContain('<title>changed</title>');
    writer.kill('SIGKILL');
    await exited(writer);

    // The definition is the old one, byte for byte; only the orphaned temp file is new.
    const after = snapshotDir(dirs.stateDir);
    expect(after['demo.xml']).toBe(before['demo.xml']);
    expect(Object.keys(after).sort()).toEqual([...Object.keys(before), temp!].sort());
    expect(JSON.parse((await baton(['vm', 'list', '--all', '--json'], env)).stdout).map((e: { name: string }) => e.name)).toEqual(['demo']);
    expect((await baton(['vm', 'dumpxml', 'demo'], env)).stdout).toContain('<title>Baton demo');

    // The lock died with the writer: the next define goes through and sweeps the temp file.
    const redo = await baton(['vm', 'define', changed], env);
    expect(redo.status).toBe(0);
    expect(fs.readdirSync(dirs.stateDir).filter((n) => n.includes('.tmp-'))).toEqual([]);
    expect((await baton(['vm', 'dumpxml', 'demo'], env)).stdout).toContain('<title>changed</title>');
  });
});

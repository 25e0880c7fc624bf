import { runCommand } from '@oclif/test';
import { Console } from 'node:console';
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { tempBatonDirs } from '../domain/helpers';
import { REPO } from '../cli/helpers';
import { ensureDistBuilt } from './helpers';

/**
 * The lifecycle commands in-process through @oclif/test's runCommand (argument parsing, error
 * codes, output), without a hypervisor: each case is a refusal or a shut-off domain.
 *
 * @oclif/core loads commands with a dynamic import(), which jest's CommonJS sandbox only runs
 * when node has --experimental-vm-modules; without it runCommand silently runs nothing (empty
 * stdout, no error). So these tests need NODE_OPTIONS=--experimental-vm-modules and say so
 * otherwise. Jest's own console decorates what oclif prints: a plain Console keeps stdout exact.
 */
const vmModulesEnabled = typeof (vm as unknown as { SourceTextModule?: unknown }).SourceTextModule === 'function';
const skipReason = vmModulesEnabled ? undefined : '@oclif/test runCommand needs NODE_OPTIONS=--experimental-vm-modules (see test/e2e/oclif-commands.test.ts)';

describe('lifecycle commands via @oclif/test', () => {
  const dirs = tempBatonDirs('oclif');
  const saved = { state: process.env.BATON_STATE_DIR, run: process.env.BATON_RUN_DIR, log: process.env.BATON_LOG_DIR };
  const jestConsole = global.console;
  const run = (args: string[]) => runCommand(args, { root: REPO });
  const jsonError = async (args: string[]): Promise<{ code: string; message: string }> => JSON.parse((await run([...args, '--json'])).stdout).error;

  beforeAll(() => {
    if (skipReason) return;
    ensureDistBuilt();
    global.console = new Console(process.stdout, process.stderr);
    process.env.BATON_STATE_DIR = dirs.stateDir;
    process.env.BATON_RUN_DIR = dirs.runDir;
    process.env.BATON_LOG_DIR = dirs.logDir;
    // A stand-in kernel: nothing here boots, define only checks the file exists.
    fs.mkdirSync(dirs.root, { recursive: true });
    fs.writeFileSync(path.join(dirs.root, 'kernel'), 'stand-in\n');
    fs.writeFileSync(
      path.join(dirs.root, 'idle.xml'),
      `<domain type='kvm'><name>idle</name><memory unit='MiB'>128</memory><os><type>hvm</type><kernel>kernel</kernel></os><devices><serial type='pty'/></devices></domain>`,
    );
  });
  afterEach(() => {
    // Failing commands set the exit status for the CLI; it must not become jest's.
    process.exitCode = undefined;
  });
  afterAll(() => {
    global.console = jestConsole;
    for (const [key, value] of [['BATON_STATE_DIR', saved.state], ['BATON_RUN_DIR', saved.run], ['BATON_LOG_DIR', saved.log]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    dirs.cleanup();
  });

  it('defines a domain and reports it shut off', async () => {
    if (skipReason) return console.warn(skipReason);
    const defined = await run(['vm', 'define', path.join(dirs.root, 'idle.xml')]);
    expect(defined.stdout).toBe(`Domain 'idle' defined from ${path.join(dirs.root, 'idle.xml')}\n`);
    expect((await run(['vm', 'domstate', 'idle', '--reason'])).stdout).toBe('shut off (unknown)\n');
  });

  it('refuses to stop, pause, resume or attach to a domain that is not running', async () => {
    if (skipReason) return console.warn(skipReason);
    for (const command of ['destroy', 'shutdown', 'suspend', 'resume']) {
      expect(await jsonError(['vm', command, 'idle'])).toMatchObject({ code: 'EDOMAINNOTACTIVE', message: "domain 'idle' is not running; start it with 'baton vm start idle'" });
    }
    const consoleRun = await run(['vm', 'console', 'idle']);
    expect(consoleRun.stderr).toBe("error: domain 'idle' is not running; start it with 'baton vm start idle --console'\n");
  });

  it('checks arguments before doing anything', async () => {
    if (skipReason) return console.warn(skipReason);
    expect(await jsonError(['vm', 'start', 'idle', '--console'])).toMatchObject({ code: 'EUSAGE', message: expect.stringContaining('--console and --json cannot be combined') });
    expect((await jsonError(['vm', 'shutdown', 'idle', '--timeout', '-1'])).code).toBe('EUSAGE');
    expect(await jsonError(['vm', 'start', 'nosuch'])).toMatchObject({ code: 'ENODOMAIN' });
    expect((await run(['vm', 'start'])).stderr).toContain('Missing 1 required arg');
  });

  it('refuses to start a domain whose kernel has gone, naming the file', async () => {
    if (skipReason) return console.warn(skipReason);
    fs.rmSync(path.join(dirs.root, 'kernel'));
    expect(await jsonError(['vm', 'start', 'idle'])).toMatchObject({ code: 'EBOOTFILE', message: expect.stringContaining(`kernel '${path.join(dirs.root, 'kernel')}' does not exist`) });
    expect((await run(['vm', 'domstate', 'idle'])).stdout).toBe('shut off\n');
  });
});

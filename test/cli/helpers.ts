import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const REPO = path.resolve(__dirname, '../..');
const BIN = path.join(REPO, 'bin/run.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const stat = fs.statSync(path.join(dir, name));
    if (stat.isFile()) newest = Math.max(newest, stat.mtimeMs);
  }
  return newest;
}

/**
 * The CLI and baton-hv run from dist/ (package.json: oclif.commands = ./dist/commands). `npm
 * test` builds it in set-up; a test run alone rebuilds it when any TypeScript source is newer.
 */
export function ensureDistBuilt(): void {
  const built = ['dist/manager/lifecycle.js', 'dist/commands/vm/start.js', 'dist/commands/vm/define.js', 'dist/hypervisor/main.js', 'dist/domain/xml.js', 'dist/domain/store.js']
    .map((f) => path.join(REPO, f));
  const sourceTime = newestMtime(path.join(REPO, 'src'));
  const fresh = (): boolean => built.every((f) => fs.existsSync(f) && fs.statSync(f).mtimeMs >= sourceTime);
  if (fresh()) return;
  const run = spawnSync('npx', ['--no-install', 'tsc', '-p', 'tsconfig.build.json'], { cwd: REPO, encoding: 'utf8' });
  // tsc still emits when other parts of the tree have type errors; what matters is our output.
  if (!fresh()) throw new Error(`building dist/ failed:\n${run.stdout}${run.stderr}`);
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `baton ARGS...` as a real subprocess with the given BATON_* environment. */
export function baton(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** BATON_* variables for a temp directory triple. */
export function batonEnv(dirs: { stateDir: string; runDir: string; logDir: string }): NodeJS.ProcessEnv {
  return { BATON_STATE_DIR: dirs.stateDir, BATON_RUN_DIR: dirs.runDir, BATON_LOG_DIR: dirs.logDir, BATON_LOG_LEVEL: 'warn' };
}

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const REPO = path.resolve(__dirname, '../..');

/** trace() reads BATON_TRACE when loaded: each case runs in its own node process. */
function runTraced(env: NodeJS.ProcessEnv, script: string): void {
  execFileSync(process.execPath, ['-e', script], { cwd: REPO, env: { ...process.env, ...env }, stdio: 'pipe' });
}

describe('trace (BATON_TRACE)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-trace-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('appends "<monotonic µs> <pid> <event>" lines, in order, by the time the process exits', () => {
    const file = path.join(dir, 'on.txt');
    // CLOCK_MONOTONIC, shared with this process: the lines fall between these two readings.
    const before = Number(process.hrtime.bigint() / 1000n);
    runTraced({ BATON_TRACE: file }, "const { trace } = require('./dist/util/trace'); trace('first step'); trace('second step');");
    const after = Number(process.hrtime.bigint() / 1000n);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n').filter((l) => !/ gc /.test(l));
    expect(lines).toHaveLength(2);
    const parsed = lines.map((l) => /^(\d+) (\d+) (.+)$/.exec(l));
    expect(parsed.map((m) => m?.[3])).toEqual(['first step', 'second step']);
    const times = parsed.map((m) => Number(m?.[1]));
    expect(times[0]).toBeGreaterThanOrEqual(before);
    expect(times[1]).toBeGreaterThanOrEqual(times[0]);
    expect(times[1]).toBeLessThanOrEqual(after);
    expect(new Set(parsed.map((m) => m?.[2])).size).toBe(1);
  });

  it('writes nothing and stays off without BATON_TRACE', () => {
    const file = path.join(dir, 'off.txt');
    runTraced({ BATON_TRACE: '' }, `const t = require('./dist/util/trace'); t.trace('x'); if (t.tracing) process.exit(3); require('fs').writeFileSync(${JSON.stringify(file)}, 'ran');`);
    expect(fs.readFileSync(file, 'utf8')).toBe('ran');
  });
});

/**
 * baton-hv's V8 code cache (bin/baton-hv.js): compiled ahead for the whole bundle, so a
 * migration's save and restore paths do not compile inside the switchover. Written by
 * `--write-code-cache` (scripts/setup.sh) and, when missing or rejected, by a process the
 * hypervisor starts itself; either way V8 must accept it in a hypervisor's start.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { HV_ENTRY, HvTracker, REPO_ROOT, READY_LINE, hvSkipReason, sleep } from './helpers';

const BUNDLE = path.join(REPO_ROOT, 'dist/baton-hv.js');
const CACHE = `${BUNDLE}.v8cache`;
const skipReason = fs.existsSync(BUNDLE) ? hvSkipReason() : `${BUNDLE} is missing: run npm run setup`;
const hv = new HvTracker();
afterEach(() => hv.cleanup());

/** In a child with the runner's flags, as a hypervisor would: is the cache taken, and how big is a lazily compiled one? */
function checkCache(): { rejected: boolean; lazyBytes: number } {
  return JSON.parse(execFileSync(process.execPath, ['-e', `
    const fs = require('node:fs'), vm = require('node:vm'), { wrap } = require('node:module');
    const source = wrap(fs.readFileSync(${JSON.stringify(BUNDLE)}, 'utf8'));
    const cached = new vm.Script(source, { filename: ${JSON.stringify(BUNDLE)}, cachedData: fs.readFileSync(${JSON.stringify(CACHE)}) });
    const lazy = new vm.Script(source + ' ', { filename: 'lazy.js' }).createCachedData().length;
    console.log(JSON.stringify({ rejected: cached.cachedDataRejected, lazyBytes: lazy }));`]).toString()) as { rejected: boolean; lazyBytes: number };
}

test('--write-code-cache writes a cache V8 accepts, holding every function (larger than a lazy one)', () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  execFileSync(process.execPath, [HV_ENTRY, '--write-code-cache']);
  const { rejected, lazyBytes } = checkCache();
  expect(rejected).toBe(false);
  expect(fs.statSync(CACHE).size).toBeGreaterThan(lazyBytes * 5);
});

test('a hypervisor started without a cache has one written for the next start', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  fs.rmSync(CACHE, { force: true });
  try {
    const run = hv.start('cache');
    await run.waitForLine(READY_LINE);
    const deadline = Date.now() + 15_000;
    while (!fs.existsSync(CACHE) && Date.now() < deadline) await sleep(100);
    expect(fs.existsSync(CACHE)).toBe(true);
    expect(checkCache().rejected).toBe(false);
  } finally {
    // The other suites start from a cache either way.
    if (!fs.existsSync(CACHE)) execFileSync(process.execPath, [HV_ENTRY, '--write-code-cache']);
  }
}, 30_000);

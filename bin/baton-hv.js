#!/usr/bin/env node
// baton-hv: one hypervisor process per running domain (see src/hypervisor/main.ts).
//
// Start-up time matters (a VM's boot starts here), so this runs the single-file bundle
// (dist/baton-hv.js, built by scripts/setup.sh) through V8's code cache: no module
// resolution across ~60 files and no recompilation. It falls back to the plain build when
// the bundle is missing or older than it (e.g. right after a bare `tsc`).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const dist = path.join(__dirname, '..', 'dist');
const bundle = path.join(dist, 'baton-hv.js');
const plain = path.join(dist, 'hypervisor', 'main.js');

function mtime(file) {
  try { return fs.statSync(file).mtimeMs; } catch { return -1; }
}

const cacheFile = `${bundle}.v8cache`;
const wrapped = () => require('node:module').wrap(fs.readFileSync(bundle, 'utf8'));

function loadBundle() {
  const vm = require('node:vm');
  let cachedData;
  try { cachedData = fs.readFileSync(cacheFile); } catch { /* first run */ }
  const script = new vm.Script(wrapped(), { filename: bundle, cachedData });
  const mod = { exports: {} };
  script.runInThisContext()(mod.exports, require('node:module').createRequire(bundle), mod, bundle, dist);
  if (!cachedData || script.cachedDataRejected) {
    // Another process writes it (it compiles the whole bundle): with this one's V8 flags, so
    // the next start accepts it; later, so the guest's start is not competing with it.
    setTimeout(() => {
      const { spawn } = require('node:child_process');
      spawn(process.execPath, [...process.execArgv, __filename, '--write-code-cache'], { stdio: 'ignore' }).unref();
    }, 2000).unref();
  }
  return mod.exports;
}

/**
 * The cache holds every function of the bundle, compiled ahead (V8's --no-lazy while
 * compiling for it), not only those start-up ran: a migration runs its save path once in the
 * source and its restore path once in the destination, and compiling them on first call
 * landed in the set-up before the pause and in the pause itself. Run by scripts/setup.sh.
 */
function writeCodeCache() {
  const v8 = require('node:v8');
  const vm = require('node:vm');
  require('node:os').setPriority(0, 19);
  v8.setFlagsFromString('--no-lazy');
  let script;
  try {
    script = new vm.Script(wrapped(), { filename: bundle });
  } finally {
    v8.setFlagsFromString('--lazy'); // the flags the cache records must be those a hypervisor runs with
  }
  const tmp = `${cacheFile}.${process.pid}`;
  fs.writeFileSync(tmp, script.createCachedData());
  fs.renameSync(tmp, cacheFile);
}

if (process.argv[2] === '--write-code-cache') {
  try {
    writeCodeCache();
  } catch (err) {
    // A read-only install runs without a cache.
    process.stderr.write(`baton-hv: cannot write the code cache ${cacheFile}: ${err.message}\n`);
    process.exitCode = 1;
  }
} else {
  const entry = mtime(bundle) >= mtime(plain) ? loadBundle() : require(plain);
  entry.main(process.argv.slice(2));
}

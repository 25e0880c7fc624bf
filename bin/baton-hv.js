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

function loadBundle() {
  const vm = require('node:vm');
  const Module = require('node:module');
  const cacheFile = `${bundle}.v8cache`;
  const source = fs.readFileSync(bundle, 'utf8');
  let cachedData;
  try { cachedData = fs.readFileSync(cacheFile); } catch { /* first run */ }
  const script = new vm.Script(Module.wrap(source), { filename: bundle, cachedData });
  const mod = { exports: {} };
  script.runInThisContext()(mod.exports, Module.createRequire(bundle), mod, bundle, dist);
  if (!cachedData || script.cachedDataRejected) {
    // Written once the guest is up, so the cache holds the functions start-up compiled.
    setTimeout(() => {
      try {
        const tmp = `${cacheFile}.${process.pid}`;
        fs.writeFileSync(tmp, script.createCachedData());
        fs.renameSync(tmp, cacheFile);
      } catch { /* read-only install: run without a cache */ }
    }, 2000).unref();
  }
  return mod.exports;
}

const entry = mtime(bundle) >= mtime(plain) ? loadBundle() : require(plain);
entry.main(process.argv.slice(2));

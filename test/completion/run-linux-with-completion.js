#!/usr/bin/env node
// Development runner: baton-hv (from dist/) with the instruction completer installed, a
// timeline of serial lines (seconds since start) and completion counts on stderr.
// Usage: node test/completion/run-linux-with-completion.js <baton-hv flags...>
// Env: BATON_TIMELINE=FILE (timeline output); BATON_RESUME_INTERNAL_ERROR=1 (after an
// --incoming restore of a VM saved in internal-error, run it again: lets a new completer
// build retry the instruction that stopped the old one without re-booting).
const fs = require('node:fs');
const path = require('node:path');
const dist = path.join(__dirname, '../../dist/hypervisor');
const { Vm } = require(path.join(dist, 'vm.js'));
const { installInstructionCompleter } = require(path.join(dist, 'x86/insn-completer.js'));
const started = performance.now();
const elapsed = () => ((performance.now() - started) / 1000).toFixed(1);
const timeline = process.env.BATON_TIMELINE;
const originalCreate = Vm.create;
Vm.create = function createWithCompleter(...args) {
  const vm = originalCreate.apply(this, args);
  // Once baton-hv installs a completer itself, keep it (its counts are then on QMP).
  const completer = vm.instructionCompleter ? undefined : installInstructionCompleter(vm);
  let partial = '';
  vm.on('serialOutput', (bytes) => {
    partial += bytes.toString('latin1');
    const lines = partial.split('\n');
    partial = lines.pop();
    if (timeline) for (const l of lines) fs.appendFileSync(timeline, `${elapsed()} ${l.replace(/\r$/, '')}\n`);
  });
  const report = () => process.stderr.write(`[${elapsed()} s] status=${vm.status}` +
    (completer ? ` counts=${JSON.stringify(completer.countsObject())}` : '') +
    (completer?.lastDecline ? ` lastDecline=${JSON.stringify(completer.lastDecline)}` : '') + '\n');
  const timer = setInterval(report, 30000);
  timer.unref();
  let resumed = false;
  vm.on('event', (name) => { if (name === 'STOP') report(); });
  if (process.env.BATON_RESUME_INTERNAL_ERROR) {
    const poll = setInterval(() => {
      if (!resumed && vm.status === 'internal-error') {
        resumed = true;
        clearInterval(poll);
        process.stderr.write(`[${elapsed()} s] restored in internal-error: running again\n`);
        vm.setStatus('paused');
        vm.resume();
      }
    }, 100);
    poll.unref();
    setTimeout(() => { resumed = true; clearInterval(poll); }, 120000).unref();
  }
  return vm;
};
require(path.join(dist, 'main.js')).main(process.argv.slice(2));

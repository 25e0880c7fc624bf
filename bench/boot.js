#!/usr/bin/env node
// npm run bench:boot — process start to "baton-testguest: ready" for baton-hv and QEMU
// (microvm and pc) on the same KVM and the same guest file, 5 runs each; RSS outside guest
// RAM; the `node -e 0` floor. With --linux, also the time to the Debian kernel's x86/fpu
// line (informational: ring 0 is emulated on this host). Ends with one JSON line.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { REPO, median, rssOutsideGuestMiB, runUntil, stop } = require('./lib');

const RUNS = Number(process.env.BENCH_RUNS || 5);
const GUEST = path.join(REPO, 'test/guest/build/testguest.elf');
const READY = /baton-testguest: ready/;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-boot-'));

async function measure(label, start) {
  const times = [];
  const rss = [];
  for (let i = 0; i < RUNS; i++) {
    const { ms, child } = await start(i);
    times.push(ms);
    try { rss.push(rssOutsideGuestMiB(child.pid)); } catch { /* exited */ }
    await stop(child);
  }
  console.log(`${label.padEnd(14)} ready ms: ${times.map((t) => t.toFixed(0)).join(' ')}  median ${median(times).toFixed(1)}` +
    (rss.length ? `  rss MiB median ${median(rss).toFixed(1)}` : ''));
  return { ms: median(times), rss: median(rss) };
}

function batonArgs(i, extra = []) {
  const log = path.join(tmp, `baton-${i}.log`);
  return { log, args: [path.join(REPO, 'bin/baton-hv.js'), '--kernel', GUEST, '--append', 'counter interval_ms=1000', '-m', '128',
    '--monitor', path.join(tmp, `m${i}.sock`), '--serial-log', log, ...extra] };
}

function qemuArgs(machine) {
  return ['-machine', `${machine},accel=kvm`, '-cpu', 'host', '-m', '128', '-smp', '1', '-nodefaults', '-no-user-config',
    '-display', 'none', '-serial', 'stdio', '-object', 'memory-backend-memfd,id=ram,size=128M,share=on',
    '-machine', 'memory-backend=ram', '-kernel', GUEST, '-append', 'counter interval_ms=1000'];
}

(async () => {
  if (!fs.existsSync(GUEST)) throw new Error(`${GUEST} missing: run scripts/setup.sh first`);
  const node = await measure('node -e 0', async () => {
    const t0 = process.hrtime.bigint();
    const { spawnSync } = require('node:child_process');
    spawnSync(process.execPath, ['-e', '0']);
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6, child: { exitCode: 0, pid: 0 } };
  });
  const baton = await measure('baton-hv', (i) => {
    const { log, args } = batonArgs(i);
    return runUntil(process.execPath, args, READY, { logFile: log });
  });
  const microvm = await measure('qemu microvm', () => runUntil('qemu-system-x86_64', qemuArgs('microvm'), READY));
  const pc = await measure('qemu pc', () => runUntil('qemu-system-x86_64', qemuArgs('pc'), READY, { timeoutMs: 60000 }));
  const result = {
    bench: 'boot', baton_ms: round(baton.ms), qemu_microvm_ms: round(microvm.ms), qemu_pc_ms: round(pc.ms),
    node_floor_ms: round(node.ms), baton_rss_mib: round(baton.rss), qemu_microvm_rss_mib: round(microvm.rss),
    linux_fpu_baton_s: null, linux_fpu_qemu_s: null,
  };
  if (process.argv.includes('--linux')) Object.assign(result, await linuxFpu());
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(JSON.stringify(result));
})().catch((err) => { console.error(`bench:boot failed: ${err.message}`); process.exit(1); });

function round(x) { return x === null || x === undefined ? null : Math.round(x * 10) / 10; }

/** Time to the Debian kernel's "x86/fpu" line under each hypervisor (one run each: minutes). */
async function linuxFpu() {
  let image;
  try { image = require(path.join(REPO, 'dist/guest-image.js')).guestImagePaths(); } catch (err) {
    console.log(`linux: skipped (${err.message})`);
    return {};
  }
  // Without `quiet`: the x86/fpu lines are informational messages.
  const cmdline = fs.readFileSync(image.cmdlineDefault, 'utf8').trim().replace(/\bquiet\b/, '') + ' nr_cpus=1 pci=off acpi=off';
  const FPU = /x86\/fpu/;
  const log = path.join(tmp, 'linux-baton.log');
  const b = await runUntil(process.execPath, [path.join(REPO, 'bin/baton-hv.js'), '--kernel', image.vmlinux, '--initrd', image.initramfsUncompressed,
    '--append', cmdline, '-m', '256', '--monitor', path.join(tmp, 'lm.sock'), '--serial-log', log], FPU, { logFile: log, timeoutMs: 600000 });
  await stop(b.child);
  const q = await runUntil('qemu-system-x86_64', ['-machine', 'microvm,accel=kvm', '-cpu', 'host,-xsave,-cx16', '-m', '256', '-nodefaults',
    '-no-user-config', '-display', 'none', '-serial', 'stdio', '-kernel', image.vmlinux, '-initrd', image.initramfsUncompressed,
    '-append', cmdline], FPU, { timeoutMs: 600000 });
  await stop(q.child);
  return { linux_fpu_baton_s: round(b.ms / 1000), linux_fpu_qemu_s: round(q.ms / 1000) };
}

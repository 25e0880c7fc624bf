#!/usr/bin/env node
// npm run bench:net — the test guest's virtio-net data path under baton-hv and under QEMU's
// userspace virtio-net (vhost=off, modern virtio-net-pci, pc + qboot), same persistent TAP
// in a network namespace made here, same guest file:
//   guest→host: the guest's `source` mode; the host counts what arrives (test/net/udp-tool.c recv);
//   host→guest: udp-tool send floods the guest's `sink` mode; the guest reports what it got.
// 1400-byte UDP payloads for bandwidth (Mbit/s of payload), 64-byte Ethernet frames
// (22-byte payloads) for packets per second. Host CPU per packet: the hypervisor process's
// utime+stime minus its guest time (/proc/PID/stat; the polling guest's vCPU time is not
// the device's cost) over the measured window, divided by the frames the guest counted.
// Median of BENCH_RUNS (3) runs; ends with one JSON line.
'use strict';
const { execFileSync, spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { REPO, median } = require('./lib');

const RUNS = Number(process.env.BENCH_RUNS || 3);
const SECONDS = Number(process.env.BENCH_NET_SECONDS || 3);
const GUEST = path.join(REPO, 'test/guest/build/testguest.elf');
const QBOOT = '/usr/share/qemu/qboot.rom';
const NETNS = `bt-bench-${process.pid}`;
const TAP = `btb${process.pid % 100000}`;
const HOST_IP = '10.99.250.1';
const GUEST_IP = '10.99.250.2';
const PORT = 9250;
const BIG_PAYLOAD = 1400;
const SMALL_PAYLOAD = 64 - 14 - 20 - 8; // a 64-byte Ethernet frame
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-net-'));
const children = new Set();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function inNetns(cmd, args) {
  return ['netns', 'exec', NETNS, cmd, ...args];
}

/** Process CPU seconds outside guest mode: utime + stime - guest_time (fields 14, 15, 43). */
function hostCpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state): field n is f[n - 3]
  return (Number(f[11]) + Number(f[12]) - Number(f[40])) / CLK_TCK;
}

function startHypervisor(kind, append, tag) {
  const mac = '52:54:00:99:fa:02';
  let args;
  let serialLog;
  if (kind === 'baton') {
    serialLog = path.join(tmp, `${tag}.log`);
    args = [process.execPath, path.join(REPO, 'bin/baton-hv.js'), '--kernel', GUEST, '--append', append, '-m', '128', '--smp', '1',
      '--monitor', path.join(tmp, `${tag}.qmp`), '--serial-log', serialLog,
      '--netdev', `tap,id=n0,ifname=${TAP},script=no,downscript=no`, '--device', `virtio-net-pci,netdev=n0,id=nic0,mac=${mac}`];
  } else {
    args = ['qemu-system-x86_64', '-machine', 'pc,accel=kvm', ...(fs.existsSync(QBOOT) ? ['-bios', QBOOT] : []),
      '-cpu', 'host', '-m', '128', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio',
      '-kernel', GUEST, '-append', append,
      '-netdev', `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`,
      '-device', `virtio-net-pci,netdev=n0,disable-legacy=on,romfile=,mac=${mac}`];
  }
  // `ip netns exec` execs in place: the child's pid is the hypervisor's.
  const child = spawn('ip', inNetns(args[0], args.slice(1)), { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('latin1').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.on('exit', () => { children.delete(child); r(); }));
  const serial = () => {
    if (!serialLog) return stdout;
    try { return fs.readFileSync(serialLog, 'latin1'); } catch { return ''; }
  };
  return {
    pid: child.pid,
    serial,
    async waitFor(re, timeoutMs = 30000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = re.exec(serial());
        if (m) return m;
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${kind} exited: ${stderr.slice(-800)}\n${serial().slice(-800)}`);
        if (Date.now() > deadline) throw new Error(`${kind}: timed out waiting for ${re}\n${serial().slice(-800)}\n${stderr.slice(-800)}`);
        await sleep(10);
      }
    },
    /** The last `<mode> frames F bytes B` report, with the time it was read. */
    lastReport(mode) {
      const all = [...serial().matchAll(new RegExp(`^${mode} frames (\\d+) bytes (\\d+)$`, 'gm'))];
      const m = all[all.length - 1];
      return { frames: m ? Number(m[1]) : 0, bytes: m ? Number(m[2]) : 0 };
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) { try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ } }
      await exited;
    },
  };
}

function runTool(args) {
  const child = spawn('ip', inNetns(path.join(tmp, 'udp-tool'), args.map(String)), { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (err += d));
  // 'close', not 'exit': only then has all of its JSON been read.
  return new Promise((resolve, reject) => child.on('close', (code) => {
    children.delete(child);
    if (code !== 0) reject(new Error(`udp-tool ${args.join(' ')} failed: ${err}`));
    else resolve(JSON.parse(out.trim().split('\n').pop()));
  }));
}

/** Reads the guest's report at the window's start and end, and the hypervisor's CPU in between. */
async function window(hv, mode, warmupMs) {
  await sleep(warmupMs);
  const reportMs = 100;
  await sleep(reportMs + 20); // a fresh report
  const r0 = hv.lastReport(mode);
  const cpu0 = hostCpuSeconds(hv.pid);
  await sleep(SECONDS * 1000);
  const r1 = hv.lastReport(mode);
  const cpu1 = hostCpuSeconds(hv.pid);
  const frames = r1.frames - r0.frames;
  return { frames, cpuUsPerPkt: frames > 0 ? ((cpu1 - cpu0) * 1e6) / frames : null };
}

/** guest→host: the host receiver's rate, and CPU per frame the guest sent. */
async function measureTx(kind, payload, run) {
  const receiver = runTool(['recv', PORT, 0, 2000, SECONDS + 30, SECONDS + 0.5]);
  await sleep(200);
  const hv = startHypervisor(kind, `source ip=${GUEST_IP}/24 peer=${HOST_IP} port=${PORT} size=${payload} report_ms=100`, `${kind}-tx${payload}-${run}`);
  try {
    await hv.waitFor(/^baton-testguest: source peer /m);
    const w = await window(hv, 'source', 300);
    const got = await receiver;
    if (got.badPayload || got.outOfOrder) throw new Error(`${kind} tx: ${got.badPayload} bad payloads, ${got.outOfOrder} out of order`);
    const pps = got.activeSeconds > 0 ? got.received / got.activeSeconds : 0;
    return { pps, mbps: (pps * payload * 8) / 1e6, cpuUsPerPkt: w.cpuUsPerPkt, guestSentPps: w.frames / SECONDS };
  } finally {
    await hv.stop();
  }
}

/** host→guest: the guest sink's rate while udp-tool floods it. */
async function measureRx(kind, payload, run) {
  const hv = startHypervisor(kind, `sink ip=${GUEST_IP}/24 report_ms=100`, `${kind}-rx${payload}-${run}`);
  try {
    await hv.waitFor(/^baton-testguest: net up /m);
    spawnSync('ip', inNetns('ping', ['-c', '1', '-W', '2', GUEST_IP])); // ARP before the flood
    const flood = runTool(['send', GUEST_IP, 9, payload, SECONDS + 1]);
    const w = await window(hv, 'sink', 400);
    const sent = await flood;
    const pps = w.frames / SECONDS;
    return { pps, mbps: (pps * payload * 8) / 1e6, cpuUsPerPkt: w.cpuUsPerPkt, hostSentPps: sent.sent / sent.seconds };
  } finally {
    await hv.stop();
  }
}

function summarize(label, results) {
  const m = (k) => median(results.map((r) => r[k]));
  const out = { pps: m('pps'), mbps: m('mbps'), cpuUsPerPkt: m('cpuUsPerPkt') };
  console.log(`${label.padEnd(26)} kpps ${results.map((r) => (r.pps / 1000).toFixed(1)).join(' ')}  median ${(out.pps / 1000).toFixed(1)}` +
    `  Mbit/s ${out.mbps.toFixed(0)}  host CPU/pkt ${out.cpuUsPerPkt === null ? 'n/a' : out.cpuUsPerPkt.toFixed(2) + ' us'}`);
  return out;
}

const round = (x, d = 2) => (x === null || x === undefined ? null : Number(x.toFixed(d)));

(async () => {
  if (!fs.existsSync(GUEST)) throw new Error(`${GUEST} missing: run \`make -C test/guest\``);
  if (process.getuid() !== 0) throw new Error('bench:net needs root (network namespace, TAP)');
  execFileSync('gcc', ['-O2', '-o', path.join(tmp, 'udp-tool'), path.join(REPO, 'test/net/udp-tool.c')]);
  execFileSync('ip', ['netns', 'add', NETNS]);
  execFileSync('ip', ['-n', NETNS, 'link', 'set', 'lo', 'up']);
  execFileSync('ip', inNetns('ip', ['tuntap', 'add', 'dev', TAP, 'mode', 'tap']));
  execFileSync('ip', ['-n', NETNS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP]);
  execFileSync('ip', ['-n', NETNS, 'link', 'set', TAP, 'up']);
  execFileSync('ip', inNetns('sh', ['-c', `echo 1 > /proc/sys/net/ipv6/conf/${TAP}/disable_ipv6`]));
  console.log(`bench:net — ${RUNS} runs of ${SECONDS} s each; payload ${BIG_PAYLOAD} B (bandwidth) and ${SMALL_PAYLOAD} B = 64-byte frames (pps)`);
  const res = {};
  for (const kind of ['baton', 'qemu']) {
    const tx = [], txSmall = [], rx = [], rxSmall = [];
    for (let i = 0; i < RUNS; i++) {
      tx.push(await measureTx(kind, BIG_PAYLOAD, i));
      txSmall.push(await measureTx(kind, SMALL_PAYLOAD, i));
      rx.push(await measureRx(kind, BIG_PAYLOAD, i));
      rxSmall.push(await measureRx(kind, SMALL_PAYLOAD, i));
    }
    res[kind] = {
      tx: summarize(`${kind} guest→host 1400 B`, tx),
      txSmall: summarize(`${kind} guest→host 64 B frames`, txSmall),
      rx: summarize(`${kind} host→guest 1400 B`, rx),
      rxSmall: summarize(`${kind} host→guest 64 B frames`, rxSmall),
    };
  }
  const b = res.baton;
  const q = res.qemu;
  const result = {
    bench: 'net',
    baton_tx_mbps: round(b.tx.mbps, 1), qemu_tx_mbps: round(q.tx.mbps, 1), tx_ratio: round(b.tx.mbps / q.tx.mbps),
    baton_rx_mbps: round(b.rx.mbps, 1), qemu_rx_mbps: round(q.rx.mbps, 1), rx_ratio: round(b.rx.mbps / q.rx.mbps),
    baton_tx_kpps: round(b.txSmall.pps / 1000, 1), qemu_tx_kpps: round(q.txSmall.pps / 1000, 1),
    // per packet of the 64-byte guest→host run (the packet-rate-bound case)
    baton_cpu_us_per_pkt: round(b.txSmall.cpuUsPerPkt), qemu_cpu_us_per_pkt: round(q.txSmall.cpuUsPerPkt),
  };
  console.log(JSON.stringify(result));
})().catch((err) => {
  console.error(`bench:net failed: ${err.stack || err.message}`);
  process.exitCode = 1;
}).finally(async () => {
  for (const c of children) { try { process.kill(c.pid, 'SIGKILL'); } catch { /* gone */ } }
  spawnSync('ip', ['netns', 'del', NETNS]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

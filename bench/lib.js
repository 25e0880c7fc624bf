// Shared helpers for the benchmarks: spawn a hypervisor, watch its serial output for a
// line, sample its memory, and summarise runs as medians.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');

const REPO = require('node:path').resolve(__dirname, '..');

function median(xs) {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Memory of a process outside shared memory (guest RAM is a memfd/shmem for both hypervisors). */
function rssOutsideGuestMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status) || [0, 0])[1]);
  return (kb('RssAnon') + kb('RssFile')) / 1024;
}

/**
 * Spawns `cmd args`, resolves when `pattern` appears on stdout (or in `logFile`), with the
 * time from spawn and the child. Rejects after `timeoutMs`.
 */
function runUntil(cmd, args, pattern, { timeoutMs = 30000, logFile, env } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env || process.env });
    let out = '';
    let done = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      clearInterval(poll);
      clearTimeout(timer);
      if (err) { child.kill('SIGKILL'); reject(err); return; }
      resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, child, output: out });
    };
    const check = (text) => { if (pattern.test(text)) finish(); };
    child.stdout.on('data', (d) => { out += d; check(out); });
    child.stderr.on('data', (d) => { out += d; });
    child.on('exit', (code) => finish(new Error(`${cmd} exited (${code}) before ${pattern}: ${out.slice(-500)}`)));
    const poll = logFile ? setInterval(() => {
      try { check(fs.readFileSync(logFile, 'utf8')); } catch { /* not yet */ }
    }, 1) : undefined;
    const timer = setTimeout(() => finish(new Error(`timeout waiting for ${pattern} from ${cmd}`)), timeoutMs);
  });
}

async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

module.exports = { REPO, median, rssOutsideGuestMiB, runUntil, stop };

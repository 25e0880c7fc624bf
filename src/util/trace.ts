/**
 * Timing milestones for work measured in microseconds (a migration's pause), where a log
 * line per step would cost more than the step. Off unless BATON_TRACE names a file; then
 * each `trace(event)` records CLOCK_MONOTONIC microseconds (one clock for every process on
 * the host, e.g. both hypervisors and bench:migrate's echo gaps; Node's performance.timeOrigin
 * is only good to a millisecond or two between processes) and the lines are appended to the
 * file off the hot path:
 *
 *   <monotonic µs> <pid> <event>
 */
import fs from 'node:fs';

const file = process.env.BATON_TRACE;
let pending: string[] = [];
let flushScheduled = false;

function flush(): void {
  flushScheduled = false;
  if (!file || pending.length === 0) return;
  const lines = pending.join('');
  pending = [];
  try { fs.appendFileSync(file, lines); } catch { /* tracing never breaks the traced work */ }
}

export const tracing = file !== undefined && file !== '';

/** CLOCK_MONOTONIC in microseconds (libuv's hrtime). */
export function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

export function trace(event: string): void {
  if (!tracing) return;
  const us = monotonicUs();
  pending.push(`${us} ${process.pid} ${event}\n`);
  if (!flushScheduled) {
    flushScheduled = true;
    setTimeout(flush, 100).unref();
  }
}

if (tracing) process.on('exit', flush);

if (tracing) {
  // Garbage collections stop the event loop, and with it every device: worth seeing beside the milestones.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { PerformanceObserver } = require('node:perf_hooks') as typeof import('node:perf_hooks');
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const start = Math.round(monotonicUs() - (performance.now() - e.startTime) * 1000);
      pending.push(`${start} ${process.pid} gc ${(e as unknown as { detail?: { kind?: number } }).detail?.kind ?? ''} ${e.duration.toFixed(3)} ms\n`);
    }
  }).observe({ entryTypes: ['gc'] });
}

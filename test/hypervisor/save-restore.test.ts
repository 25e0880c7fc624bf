/**
 * Save and restore through QMP, QEMU's way: `migrate` to `file:PATH` leaves the source in
 * postmigrate; a new baton-hv process started with `--incoming file:PATH` (or `defer` and
 * then `migrate-incoming`) resumes the guest. The test guest's counter and TSC must carry
 * on: no restart from tick 0, no TSC going backwards.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { QmpClient } from '../../src/hypervisor/monitor';
import {
  countLines, expectEvent, HvProcess, HvTracker, lastTick, maybe, parseTicks, queryStatus, READY_LINE, sleep, Tick, waitForStatus,
} from './helpers';

const hv = new HvTracker();
afterEach(() => hv.cleanup());

const QUIET_MS = 300;
const MIGRATION_TIMEOUT_MS = 15_000;


/** Saves the VM behind `qmp` to `file` and returns the MIGRATION statuses seen, in order. */
async function saveTo(qmp: QmpClient, file: string): Promise<string[]> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const statuses: string[] = [];
  const stopListening = qmp.onEvent((e) => { if (e.event === 'MIGRATION') statuses.push(String(e.data?.status)); });
  const finished = qmp.waitEvent('MIGRATION', (e) => e.data?.status === 'completed' || e.data?.status === 'failed', MIGRATION_TIMEOUT_MS);
  finished.catch(() => undefined);
  expect(await qmp.execute('migrate', { uri: `file:${file}` })).toEqual({});
  await finished;
  stopListening();
  return statuses;
}

/** Starts a process that restores `saveFile`, with the same machine shape as the source. */
function startRestore(tag: string, source: HvProcess, incoming: string): HvProcess {
  const dir = hv.tempDir(tag);
  return hv.spawnRaw(
    [...withoutFiles(source.args), '--monitor', path.join(dir, 'qmp.sock'), '--serial-log', path.join(dir, 'serial.log'), '--incoming', incoming],
    dir,
  );
}

/** The source's arguments minus its monitor and serial-log paths. */
function withoutFiles(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--monitor' || args[i] === '--serial-log') i++;
    else out.push(args[i]);
  }
  return out;
}

/**
 * The restored guest continues the source's count: its first whole tick follows the
 * source's last (the line being printed at the save may be the one cut in two), and no TSC
 * value goes backwards across the switch.
 */
function expectContinuation(sourceLast: Tick, restored: Tick[]): void {
  expect(restored.length).toBeGreaterThan(0);
  expect(restored[0].n).toBeGreaterThanOrEqual(sourceLast.n);
  expect(restored[0].n).toBeLessThanOrEqual(sourceLast.n + 2);
  expect(restored[0].tsc).toBeGreaterThan(sourceLast.tsc);
  for (let i = 1; i < restored.length; i++) {
    expect(restored[i].n).toBe(restored[i - 1].n + 1);
    expect(restored[i].tsc).toBeGreaterThan(restored[i - 1].tsc);
  }
}

describe.each([
  { vcpus: 1, wait: 'ring3' },
  { vcpus: 2, wait: 'ring3' },
  { vcpus: 1, wait: 'ring0' },
  { vcpus: 2, wait: 'ring0' },
])('save and restore, $vcpus vCPU(s), waiting in $wait', ({ vcpus, wait }) => {
  maybe('the restored guest goes on counting where it was saved', async () => {
    const source = hv.start(`save-${vcpus}-${wait}`, { append: `counter interval_ms=20 wait=${wait}`, vcpus });
    const qmp = await hv.qmp(source);
    await source.waitForTick(5);
    const saveFile = path.join(source.dir, 'vm.state');

    const statuses = await saveTo(qmp, saveFile);
    expect(statuses).toEqual(['setup', 'active', 'device', 'completed']);
    expect(await queryStatus(qmp)).toBe('postmigrate');
    const info = await qmp.execute<{ status: string; ram: { transferred: number; total: number } }>('query-migrate');
    expect(info.status).toBe('completed');
    expect(info.ram.total).toBe(128 * 1024 * 1024);
    expect(info.ram.transferred).toBeGreaterThan(0);
    expect(fs.statSync(saveFile).size).toBeGreaterThan(info.ram.transferred);

    const sourceTicks = parseTicks(source.serial());
    const sourceLast = lastTick(sourceTicks)!;
    await sleep(QUIET_MS);
    expect(lastTick(parseTicks(source.serial()))).toEqual(sourceLast); // the source stays stopped

    const restored = startRestore(`restore-${vcpus}-${wait}`, source, `file:${saveFile}`);
    const qmpRestored = await hv.qmp(restored);
    await waitForStatus(qmpRestored, 'running', MIGRATION_TIMEOUT_MS);
    const restoredTicks = await restored.waitForTick(sourceLast.n + 5);
    expect(countLines(restored.serial(), READY_LINE)).toBe(0); // not booted again
    expectContinuation(sourceLast, restoredTicks);

    // The source, done, quits cleanly.
    await qmp.execute('quit');
    expect(await source.waitExit()).toEqual({ code: 0, signal: null });
    // And the restored guest still honours the graceful power-off.
    await qmpRestored.execute('system_powerdown');
    expect(await restored.waitExit()).toEqual({ code: 0, signal: null });
  });
});

maybe('-incoming defer waits for migrate-incoming, then restores', async () => {
  const source = hv.start('defer-src', { append: 'counter interval_ms=20' });
  const qmp = await hv.qmp(source);
  await source.waitForTick(3);
  const saveFile = path.join(source.dir, 'vm.state');
  await saveTo(qmp, saveFile);
  const sourceLast = lastTick(parseTicks(source.serial()))!;

  const restored = startRestore('defer-dst', source, 'defer');
  const qmpRestored = await hv.qmp(restored);
  expect(await queryStatus(qmpRestored)).toBe('inmigrate');
  await sleep(QUIET_MS);
  expect(restored.serial()).toBe('');
  await qmpRestored.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  const completed = qmpRestored.waitEvent('MIGRATION', (e) => e.data?.status === 'completed', MIGRATION_TIMEOUT_MS);
  await expectEvent(qmpRestored, 'RESUME', () => qmpRestored.execute('migrate-incoming', { uri: `file:${saveFile}` }), MIGRATION_TIMEOUT_MS);
  await completed;
  expect(await queryStatus(qmpRestored)).toBe('running');
  expectContinuation(sourceLast, await restored.waitForTick(sourceLast.n + 3));
  expect((await qmpRestored.execute<{ status: string }>('query-migrate')).status).toBe('completed');
  // A second migrate-incoming is refused: the VM is no longer waiting for one.
  await expect(qmpRestored.execute('migrate-incoming', { uri: `file:${saveFile}` })).rejects.toThrow();
});

maybe('a VM saved while paused is restored paused, and runs on cont', async () => {
  const source = hv.start('paused-src', { append: 'counter interval_ms=20' });
  const qmp = await hv.qmp(source);
  await source.waitForTick(3);
  await expectEvent(qmp, 'STOP', () => qmp.execute('stop'));
  const saveFile = path.join(source.dir, 'vm.state');
  expect(await saveTo(qmp, saveFile)).toContain('completed');
  expect(await queryStatus(qmp)).toBe('postmigrate');
  const sourceLast = lastTick(parseTicks(source.serial()))!;

  const restored = startRestore('paused-dst', source, `file:${saveFile}`);
  const qmpRestored = await hv.qmp(restored);
  await waitForStatus(qmpRestored, 'paused', MIGRATION_TIMEOUT_MS);
  await sleep(QUIET_MS);
  expect(parseTicks(restored.serial())).toEqual([]);
  expect(qmpRestored.pastEvents().map((e) => e.event)).not.toContain('RESUME');

  await expectEvent(qmpRestored, 'RESUME', () => qmpRestored.execute('cont'));
  expectContinuation(sourceLast, await restored.waitForTick(sourceLast.n + 3));
});

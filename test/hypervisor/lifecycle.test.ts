/**
 * baton-hv as a real process on the real /dev/kvm, booting the test guest: it gets to
 * `ready`, its counter runs, and QMP run control (stop/cont, -S, system_reset,
 * system_powerdown, quit) and guest-initiated reboot and power-off behave as QEMU's do.
 */
import {
  countLines, expectEvent, HvTracker, lastTick, maybe, parseTicks, queryStatus, READY_LINE, sleep,
} from './helpers';

const hv = new HvTracker();
afterEach(() => hv.cleanup());

/** Long enough that a running counter at interval_ms=20 prints several ticks. */
const QUIET_MS = 300;


describe.each([1, 2])('test guest with %i vCPU(s)', (vcpus) => {
  maybe('boots to ready, counts, pauses and resumes, resets, and powers off on request', async () => {
    const proc = hv.start(`life${vcpus}`, { append: 'counter interval_ms=20', vcpus });
    const qmp = await hv.qmp(proc);
    await proc.waitForLine(READY_LINE);
    const readyMs = proc.elapsedMs();
    const ticks = await proc.waitForTick(3);
    expect(ticks.slice(0, 4).map((t) => t.n)).toEqual([0, 1, 2, 3]);
    for (let i = 1; i < ticks.length; i++) expect(ticks[i].tsc).toBeGreaterThan(ticks[i - 1].tsc);
    expect(await qmp.execute('query-status')).toEqual({ status: 'running', singlestep: false, running: true });

    // stop: STOP, paused, and no more ticks while paused.
    await expectEvent(qmp, 'STOP', () => qmp.execute('stop'));
    expect(await queryStatus(qmp)).toBe('paused');
    const atStop = lastTick(parseTicks(proc.serial()))!;
    await sleep(QUIET_MS);
    expect(lastTick(parseTicks(proc.serial()))).toEqual(atStop);

    // cont: RESUME, running, and the count goes on from where it was.
    await expectEvent(qmp, 'RESUME', () => qmp.execute('cont'));
    expect(await queryStatus(qmp)).toBe('running');
    const after = await proc.waitForTick(atStop.n + 3);
    const next = after.find((t) => t.n === atStop.n + 1)!;
    expect(next.tsc).toBeGreaterThan(atStop.tsc);

    // system_reset: RESET (host-initiated), the guest boots again from its entry point.
    const reset = await expectEvent(qmp, 'RESET', () => qmp.execute('system_reset'));
    expect(reset.data).toEqual({ guest: false, reason: 'host-qmp-system-reset' });
    await proc.waitForLine(READY_LINE, 2);
    expect(await queryStatus(qmp)).toBe('running');
    await proc.waitForSerial((s) => s.slice(s.lastIndexOf(READY_LINE)).includes('\ntick 1 tsc '), 'tick 1 after the reset');

    // system_powerdown: POWERDOWN, the guest powers off through ACPI, SHUTDOWN, exit 0.
    const shutdown = qmp.waitEvent('SHUTDOWN');
    await expectEvent(qmp, 'POWERDOWN', () => qmp.execute('system_powerdown'));
    expect((await shutdown).data).toEqual({ guest: true, reason: 'guest-shutdown' });
    expect(await proc.waitExit()).toEqual({ code: 0, signal: null });
    expect(proc.serial()).toContain('baton-testguest: powering off\n');
    expect(proc.serial()).not.toContain('power-off failed');
    console.log(`baton-hv, ${vcpus} vCPU(s): process start to "${READY_LINE}" ${readyMs} ms`);
  });
});

maybe('-S starts in prelaunch until cont; a reset while paused returns to prelaunch; quit exits 0', async () => {
  const proc = hv.start('prelaunch', { append: 'counter interval_ms=20', extraArgs: ['-S'] });
  const qmp = await hv.qmp(proc);
  expect(await qmp.execute('query-status')).toEqual({ status: 'prelaunch', singlestep: false, running: false });
  await sleep(QUIET_MS);
  expect(proc.serial()).toBe('');
  await expectEvent(qmp, 'RESUME', () => qmp.execute('cont'));
  expect(await queryStatus(qmp)).toBe('running');
  await proc.waitForTick(1);

  // A reset while paused leaves the VM in prelaunch, as QEMU 7.2 does (softmmu/runstate.c:
  // a VM not running after the reset becomes prelaunch); cont boots it again.
  await expectEvent(qmp, 'STOP', () => qmp.execute('stop'));
  await expectEvent(qmp, 'RESET', () => qmp.execute('system_reset'));
  expect(await queryStatus(qmp)).toBe('prelaunch');
  await expectEvent(qmp, 'RESUME', () => qmp.execute('cont'));
  await proc.waitForLine(READY_LINE, 2);

  // quit: answered, SHUTDOWN (host), exit 0.
  const shutdown = qmp.waitEvent('SHUTDOWN');
  shutdown.catch(() => undefined);
  expect(await qmp.execute('quit')).toEqual({});
  expect((await shutdown).data).toEqual({ guest: false, reason: 'host-qmp-quit' });
  expect(await proc.waitExit()).toEqual({ code: 0, signal: null });
});

maybe('a guest reboot resets the VM, and ends it with --no-reboot', async () => {
  // Started with -S so the clients are there before the reboot (the no-reboot one exits right after).
  const rebooting = hv.start('reboot', { append: 'reboot-test', extraArgs: ['-S'] });
  const ending = hv.start('noreboot', { append: 'reboot-test', extraArgs: ['-S', '--no-reboot'] });
  const [qmpRebooting, qmpEnding] = await Promise.all([hv.qmp(rebooting), hv.qmp(ending)]);
  await Promise.all([qmpRebooting.execute('cont'), qmpEnding.execute('cont')]);

  const reset = await qmpRebooting.waitEvent('RESET', undefined, 10_000, { includePast: true });
  expect(reset.data).toEqual({ guest: true, reason: 'guest-reset' });
  // The guest came back from its entry point: a second ready line (it then reboots again).
  const serial = await rebooting.waitForLine(READY_LINE, 2);
  expect(countLines(serial, 'baton-testguest: resetting')).toBeGreaterThanOrEqual(1);
  expect(serial).not.toContain('reset failed');
  expect(rebooting.exitStatus).toBeUndefined();

  const shutdown = await qmpEnding.waitEvent('SHUTDOWN', undefined, 10_000, { includePast: true });
  expect(shutdown.data).toEqual({ guest: true, reason: 'guest-reset' });
  expect(await ending.waitExit()).toEqual({ code: 0, signal: null });
  expect(countLines(ending.serial(), READY_LINE)).toBe(1);
});

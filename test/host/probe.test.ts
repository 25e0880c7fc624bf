/**
 * The host capability probe on the real /dev/kvm: its report must match what
 * shared/HOST-FACTS.md measured on this class of host (kvm-pvm: guest ring 0 emulated,
 * no VT-x/SVM), and `baton host validate` must print it as a real subprocess.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  HOST_CAPABILITIES, HostProbeReport, hostProbeCachePath, missingCapability, probeHost, requireCapability, requireCapabilityAsync,
} from '../../src/host/probe';
import { REPO, baton } from '../cli/helpers';
import { kvmAvailable } from '../native/realModeGuest';

jest.setTimeout(120_000);

/** kvm-pvm: /dev/kvm without hardware virtualization in the CPU flags (the facts below are its). */
function hostIsKvmPvm(): boolean {
  const flags = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1].split(/\s+/) ?? [];
  return !flags.includes('vmx') && !flags.includes('svm');
}

/** Every key path of a JSON value (array items and values' types left out). */
function keyPaths(value: unknown, prefix = ''): string[] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [prefix];
  return Object.entries(value).flatMap(([k, v]) => keyPaths(v, prefix ? `${prefix}.${k}` : k)).sort();
}

/** The CLI runs from dist/: rebuild when the probe or the command is newer than its output. */
function ensureCliBuilt(): void {
  const built = path.join(REPO, 'dist/commands/host/validate.js');
  const sources = ['src/host/probe.ts', 'src/host/tiny-guest.ts', 'src/commands/host/validate.ts'].map((f) => path.join(REPO, f));
  const newest = Math.max(...sources.map((f) => fs.statSync(f).mtimeMs));
  const fresh = () => fs.existsSync(built) && fs.statSync(built).mtimeMs >= newest;
  if (fresh()) return;
  const run = spawnSync('npx', ['--no-install', 'tsc', '-p', 'tsconfig.build.json'], { cwd: REPO, encoding: 'utf8' });
  if (!fresh()) throw new Error(`building dist/ failed:\n${run.stdout}${run.stderr}`);
}

let report: HostProbeReport | undefined;

beforeAll(async () => {
  if (fs.existsSync('/dev/kvm')) report = await probeHost({ fresh: true });
});

it("reports this host's KVM as HOST-FACTS.md measured it", () => {
  if (!kvmAvailable() || !report) return;
  const r = report;
  console.log(`host probe (${r.durationMs} ms): ring 0 ${r.speed.ring0IterationsPerSecond} it/s, ring 3 ${r.speed.ring3IterationsPerSecond} it/s, `
    + `ratio ${r.speed.ring3ToRing0Ratio}; verdict ${r.verdict.linuxGuests}: ${r.verdict.linuxGuestsReason}`);
  expect(r.kvm).toMatchObject({ device: '/dev/kvm', present: true, apiVersion: 12 });
  expect(r.verdict.ring3Guests).toBe(true);
  expect(r.ring3Guest.value).toBe(true);
  expect(r.capabilities).toMatchObject({ irqchip: true, ioeventfd: true, irqfd: true, pit2: true });
  expect(r.dirtyLog.value).toBe(true);
  expect(r.devices.tun.present).toBe(true);
  // Generous: the probe aims at well under 3 s; a loaded 2-core machine may take longer.
  expect(r.durationMs).toBeLessThan(15_000);
  if (!hostIsKvmPvm()) {
    console.warn('skipped the kvm-pvm facts: this CPU has VT-x or SVM, so ring 0 is not emulated here');
    return;
  }
  expect(r.speed.ring3ToRing0Ratio).toBeGreaterThanOrEqual(100);
  expect(r.ring0Instructions.int3.outcome).toBe('emulation-failure');
  expect(r.ring0Instructions.xrstor.outcome).toBe('emulation-failure');
  expect(r.ring0Instructions.cmpxchg16b.outcome).toBe('emulation-failure');
  expect(r.syscallFromRing3ReachesRing0.value).toBe(false);
  expect(r.cpuidHonoursSetCpuid2.value).toBe(false);
  expect(r.capabilities).toMatchObject({ manualDirtyLogProtect2: true, xsave: true, nestedState: false, tscControl: false });
  expect(r.devices.vhostNet.present).toBe(false);
  expect(r.verdict.linuxGuests).toBe('with-instruction-completion-to-init');
  expect(r.verdict.linuxGuestsReason).toMatch(/SYSCALL from ring 3 does not reach ring 0/);
});

it('caches the report for this boot and answers capability questions from it', async () => {
  if (!kvmAvailable() || !report) return;
  const cachePath = hostProbeCachePath();
  expect(cachePath).toBeDefined();
  expect(fs.existsSync(cachePath!)).toBe(true);
  expect((await probeHost()).probedAt).toBe(report.probedAt);

  expect(await requireCapabilityAsync('irqchip')).toBeUndefined();
  expect(requireCapability('ring3Guests')).toBeUndefined();
  if (hostIsKvmPvm()) {
    expect(requireCapability('vhostNet')).toMatch(/^host lacks vhostNet: \/dev\/vhost-net is absent/);
    expect(requireCapability('ring0Int3')).toMatch(/emulation-failure/);
    expect(requireCapability('linuxUserspace')).toMatch(/SYSCALL/);
    expect(requireCapability('linuxKernel')).toBeUndefined();
  }
  for (const name of HOST_CAPABILITIES) {
    const reason = missingCapability(report, name);
    if (reason !== undefined) expect(reason).toMatch(new RegExp(`^host lacks ${name}: .+`));
  }

  // Without a cached report, the synchronous form probes through the CLI and caches again.
  ensureCliBuilt();
  fs.rmSync(cachePath!);
  expect(requireCapability('tun')).toBeUndefined();
  expect(fs.existsSync(cachePath!)).toBe(true);
});

it('reports a missing or wrong KVM device cleanly, in the same JSON shape', async () => {
  const missing = await probeHost({ kvmDevice: '/nonexistent/kvm' });
  expect(missing.kvm).toMatchObject({ present: false, apiVersion: null });
  expect(missing.kvm.detail).toMatch(/\/nonexistent\/kvm does not exist/);
  expect(missing.verdict).toMatchObject({ linuxGuests: 'no', ring3Guests: false });
  expect(missing.ring0Instructions.int3.outcome).toBe('not-run');
  expect(missing.speed.ring3ToRing0Ratio).toBeNull();

  const notKvm = await probeHost({ kvmDevice: '/dev/null' });
  expect(notKvm.kvm.present).toBe(false);
  expect(notKvm.kvm.detail).toMatch(/not a KVM device.*ENOTTY/);
  if (report) expect(keyPaths(JSON.parse(JSON.stringify(missing)))).toEqual(keyPaths(JSON.parse(JSON.stringify(report))));
});

describe('baton host validate (subprocess)', () => {
  beforeAll(() => ensureCliBuilt());

  it('prints the report as JSON', async () => {
    if (!kvmAvailable()) return;
    const result = await baton(['host', 'validate', '--json'], { BATON_LOG_LEVEL: 'warn' });
    expect(result.status).toBe(0);
    const printed = JSON.parse(result.stdout) as HostProbeReport;
    expect(printed.schemaVersion).toBe(1);
    expect(printed.kvm.present).toBe(true);
    expect(printed.verdict.ring3Guests).toBe(true);
    if (report) expect(keyPaths(printed)).toEqual(keyPaths(JSON.parse(JSON.stringify(report))));
  });

  it('prints a virt-host-validate table', async () => {
    if (!kvmAvailable()) return;
    const result = await baton(['host', 'validate'], { BATON_LOG_LEVEL: 'warn' });
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/^ +KVM: checking for device \/dev\/kvm \.+: PASS$/m);
    if (hostIsKvmPvm()) {
      expect(result.stdout).toMatch(/^ +KVM: ring-0 int3 \.+: FAIL \(emulation failure\)$/m);
      expect(result.stdout).toMatch(/^ +KVM: SYSCALL from ring 3 reaches ring 0 \.+: FAIL/m);
      expect(result.stdout).toMatch(/^ +KVM: checking for device \/dev\/vhost-net \.+: WARN/m);
    }
  });

  it('exits 1 with a clear message when the KVM device is missing', async () => {
    const result = await baton(['host', 'validate', '--json', '--kvm-device', '/nonexistent/kvm'], { BATON_LOG_LEVEL: 'warn' });
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/error: KVM is absent: \/nonexistent\/kvm does not exist/);
    expect(JSON.parse(result.stdout)).toMatchObject({ kvm: { present: false }, verdict: { linuxGuests: 'no', ring3Guests: false } });
  });
});

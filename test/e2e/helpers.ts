import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isProcessAlive, readRuntimeRecord } from '../../src/domain/runtime';
import { BatonPaths } from '../../src/domain/paths';
import { baton, REPO } from '../cli/helpers';

export { ensureDistBuilt } from '../cli/helpers';

/**
 * Shared by the end-to-end tests: the real `baton` CLI as a subprocess over dist/, a real
 * guest (the ring-3 test guest) under a real baton-hv, TAPs whose host end lives in a network
 * namespace the test creates, and a cleanup that ends what the test started by pid.
 */
export const TEST_GUEST_ELF = path.join(REPO, 'test/guest/build/testguest.elf');
export const READY_LINE = 'baton-testguest: ready';

/** Why these tests cannot run here, or undefined when they can. */
export function e2eSkipReason(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return 'end-to-end tests: /dev/kvm is not usable here';
  }
  if (!fs.existsSync('/dev/net/tun')) return 'end-to-end tests: /dev/net/tun is missing (no TAP devices)';
  if (process.getuid?.() !== 0) return 'end-to-end tests: need root for TAPs and network namespaces';
  if (spawnSync('ip', ['-V']).status !== 0) return 'end-to-end tests: iproute2 (ip) is not installed';
  if (!fs.existsSync(path.join(REPO, 'native/build/Release/baton_native.node'))) return 'end-to-end tests: the native addon is not built (npm run build:native)';
  if (!fs.existsSync(TEST_GUEST_ELF)) return 'end-to-end tests: the test guest is not built (make -C test/guest)';
  return undefined;
}

export interface GuestDomainOptions {
  name: string;
  /** The test guest's command line, e.g. `echo ip=10.99.50.2/24` or `counter`. */
  cmdline: string;
  nic?: { tap: string; mac: string; netns: string; hostAddress: string };
  /** A `<cputune>` element, written after `<vcpu>`. */
  cputune?: string;
}

/** A domain XML for the test guest (absolute kernel path), optionally with one NIC in a netns. */
export function guestDomainXml(options: GuestDomainOptions): string {
  const nic = options.nic;
  const metadata = nic
    ? `<metadata><baton:domain xmlns:baton='https://baton.dev/xmlns/domain/1.0'><baton:interface dev='${nic.tap}' netns='${nic.netns}' hostAddress='${nic.hostAddress}'/></baton:domain></metadata>`
    : '';
  const iface = nic ? `<interface type='ethernet'><mac address='${nic.mac}'/><target dev='${nic.tap}' managed='yes'/><model type='virtio'/></interface>` : '';
  return `<domain type='kvm'>
  <name>${options.name}</name>
  ${metadata}
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>${options.cputune ? `\n  ${options.cputune}` : ''}
  <os><type arch='x86_64'>hvm</type><kernel>${TEST_GUEST_ELF}</kernel><cmdline>${options.cmdline}</cmdline></os>
  <devices>${iface}<serial type='pty'/><console type='pty'/></devices>
</domain>
`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value (not undefined) or `timeoutMs` passes. */
export async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000, pollMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(pollMs);
  }
}

/** `ping -c COUNT` from inside `netns`; true when every echo came back. */
export function pingFrom(netns: string, address: string, count = 3): boolean {
  const run = spawnSync('ip', ['netns', 'exec', netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', '-q', address], { encoding: 'utf8' });
  return run.status === 0;
}

export function linkExistsIn(netns: string | undefined, name: string): boolean {
  const args = netns ? ['-n', netns, 'link', 'show', 'dev', name] : ['link', 'show', 'dev', name];
  return spawnSync('ip', args, { stdio: 'ignore' }).status === 0;
}

/**
 * Ends what a test run left behind: `vm destroy` for every domain still active, SIGKILL by
 * recorded pid for any hypervisor that survived, then the netns and any leftover TAP.
 */
export async function cleanUp(paths: BatonPaths, env: NodeJS.ProcessEnv, names: string[], netnsNames: string[], taps: string[]): Promise<void> {
  for (const name of names) {
    const record = readRuntimeRecord(paths, name);
    if (!record || record.state === 'shut off') continue;
    if (isProcessAlive(record.pid, record.pidStartTime)) await baton(['vm', 'destroy', name], env);
    const after = readRuntimeRecord(paths, name);
    if (after && after.state !== 'shut off' && isProcessAlive(after.pid, after.pidStartTime)) process.kill(after.pid, 'SIGKILL');
  }
  // Let keepers run their reapers before the directories they write to go away.
  await sleep(500);
  for (const netns of netnsNames) {
    try {
      execFileSync('ip', ['netns', 'del', netns], { stdio: 'ignore' });
    } catch {
      /* not created, or already gone */
    }
  }
  for (const tap of taps) {
    if (linkExistsIn(undefined, tap)) execFileSync('ip', ['link', 'del', tap], { stdio: 'ignore' });
  }
}

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { Interface } from '../domain/types';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { ManagerErrorCode } from './errors';

const log = loggerFor('host-network');

/**
 * The host side of a domain's TAPs, set up with iproute2 after baton-hv has opened them.
 * A TAP opened by the hypervisor keeps working when the interface moves to another network
 * namespace (the open fd is bound to the device, not to a namespace), so the manager can
 * hand the host end to a namespace of the domain's choosing (`<baton:interface netns=...>`).
 * Namespaces are created when missing and never removed by Baton: several domains may share
 * one, and re-running a start must find it as it was left. A Baton-managed TAP is not
 * persistent: it disappears (from whichever namespace holds it) when its hypervisor exits.
 */

/** `ip netns add` keeps its namespaces here. */
const NETNS_DIR = '/run/netns';

function ip(args: string[], what: string): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const detail = (e.stderr ?? '').trim() || e.message;
    throw new BatonError(ManagerErrorCode.HostNetwork, `${what} failed: ip ${args.join(' ')}: ${detail}`, { command: ['ip', ...args].join(' ') });
  }
}

export function netnsExists(name: string): boolean {
  return fs.existsSync(`${NETNS_DIR}/${name}`);
}

/** Creates network namespace `name` with its loopback up, unless it exists. */
export function ensureNetns(name: string): void {
  if (netnsExists(name)) return;
  ip(['netns', 'add', name], `creating network namespace '${name}'`);
  ip(['-n', name, 'link', 'set', 'lo', 'up'], `bringing up lo in network namespace '${name}'`);
  log.info(`created network namespace ${name}`);
}

/** True when a network device called `name` exists in the root namespace (or in `netns`). */
export function linkExists(name: string, netns?: string): boolean {
  if (netns === undefined) return fs.existsSync(`/sys/class/net/${name}`);
  if (!netnsExists(netns)) return false;
  try {
    execFileSync('ip', ['-n', netns, 'link', 'show', 'dev', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A managed='no' TAP must exist before the hypervisor opens it (libvirt's rule). */
export function checkUnmanagedTaps(interfaces: Interface[]): void {
  for (const nic of interfaces) {
    if (!nic.managed && !linkExists(nic.tapName)) {
      throw new BatonError(
        ManagerErrorCode.TapMissing,
        `TAP device '${nic.tapName}' does not exist, and its interface has managed='no'; create it (ip tuntap add dev ${nic.tapName} mode tap) or set managed='yes'`,
        { tap: nic.tapName },
      );
    }
  }
}

/**
 * Sets up the host end of one managed TAP the hypervisor holds open: moves it into its
 * netns (created if missing), sets its address, brings it up — as libvirt brings up the TAPs
 * it creates. Unmanaged TAPs are left exactly as their owner configured them.
 */
export function configureHostSide(nic: Interface): void {
  if (!nic.managed) return;
  const where = nic.netns !== undefined ? ['-n', nic.netns] : [];
  if (nic.netns !== undefined) {
    ensureNetns(nic.netns);
    if (linkExists(nic.tapName, nic.netns)) {
      throw new BatonError(
        ManagerErrorCode.HostNetwork,
        `network namespace '${nic.netns}' already has a device called '${nic.tapName}'; remove it (ip -n ${nic.netns} link del ${nic.tapName}) and start again`,
        { tap: nic.tapName, netns: nic.netns },
      );
    }
    ip(['link', 'set', 'dev', nic.tapName, 'netns', nic.netns], `moving TAP '${nic.tapName}' into network namespace '${nic.netns}'`);
  }
  if (nic.hostAddress !== undefined) {
    ip([...where, 'addr', 'replace', nic.hostAddress, 'dev', nic.tapName], `setting address ${nic.hostAddress} on TAP '${nic.tapName}'`);
  }
  ip([...where, 'link', 'set', 'dev', nic.tapName, 'up'], `bringing up TAP '${nic.tapName}'`);
  log.info(`host side of ${nic.tapName} ready`, { netns: nic.netns, address: nic.hostAddress });
}

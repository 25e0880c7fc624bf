import { ChildProcess, execFileSync, spawn } from 'node:child_process';
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

/**
 * The host-side configuration of a TAP that a `new-tap` migration carries over to the new
 * TAP: what libvirt would have set on it (addresses, MTU, up state, bridge), read with
 * `ip -json`. Link-local addresses are left out: the kernel gives every interface its own.
 */
export interface TapHostConfig {
  ifindex: number;
  /** The host end's MAC: frames the guest addresses to the old TAP must be taken by the new one. */
  mac: string;
  mtu: number;
  up: boolean;
  /** Bridge (or other master) the TAP is a port of. */
  master?: string;
  /** `address/prefix`, IPv4 and IPv6 global ones. */
  addresses: string[];
}

interface IpJsonLink {
  ifindex: number;
  address: string;
  mtu: number;
  flags: string[];
  master?: string;
  addr_info?: { family: string; local: string; prefixlen: number; scope: string }[];
}

function inNetns(netns: string | undefined): string[] {
  return netns !== undefined ? ['-n', netns] : [];
}

/** Reads what a new-tap migration must carry over from TAP `name` (in `netns`, or the root namespace). */
export function readTapHostConfig(name: string, netns?: string): TapHostConfig {
  const text = ip([...inNetns(netns), '-json', 'addr', 'show', 'dev', name], `reading the host configuration of TAP '${name}'${netns ? ` in network namespace '${netns}'` : ''}`);
  const [link] = JSON.parse(text) as IpJsonLink[];
  return {
    ifindex: link.ifindex,
    mac: link.address,
    mtu: link.mtu,
    up: link.flags.includes('UP'),
    ...(link.master ? { master: link.master } : {}),
    addresses: (link.addr_info ?? []).filter((a) => (a.family === 'inet' || a.family === 'inet6') && a.scope !== 'link').map((a) => `${a.local}/${a.prefixlen}`),
  };
}

/**
 * Before the pause of a new-tap migration: the destination has just opened TAP `newName` (in
 * the root namespace). Moves it next to the old one, gives it the old one's MAC and MTU and
 * brings it up if the old one is — but no address and no bridge yet: until the switch the old TAP keeps
 * the routes and bridge port, so the running source loses nothing.
 */
export function prepareNewTap(newName: string, netns: string | undefined, old: TapHostConfig): void {
  if (netns !== undefined) {
    if (linkExists(newName, netns)) {
      throw new BatonError(ManagerErrorCode.HostNetwork, `network namespace '${netns}' already has a device called '${newName}'; remove it (ip -n ${netns} link del ${newName}) and retry`, { tap: newName, netns });
    }
    ip(['link', 'set', 'dev', newName, 'netns', netns], `moving the new TAP '${newName}' into network namespace '${netns}'`);
  }
  ip(
    [...inNetns(netns), 'link', 'set', 'dev', newName, 'address', old.mac, 'mtu', String(old.mtu), ...(old.up ? ['up'] : [])],
    `setting MAC ${old.mac}, MTU ${old.mtu}${old.up ? ' and up' : ''} on the new TAP '${newName}'`,
  );
}

/**
 * The switch of a new-tap migration: the addresses (and bridge port) go from the old TAP to
 * the new one. Each address is added to the new TAP before it leaves the old one: for that
 * moment both carry it and the old TAP's older prefix route still wins, so there is never a
 * moment without a route (a ping sent then would fail with "Network is unreachable"). IPv6
 * addresses skip duplicate address detection, which would hold them tentative for a second.
 */
function tapSwitchCommands(oldName: string, newName: string, old: TapHostConfig, oldExists = true): string[] {
  return [
    ...old.addresses.map((address) => `address add ${address} dev ${newName}${address.includes(':') ? ' nodad' : ''}`),
    ...(old.master ? [...(oldExists ? [`link set dev ${oldName} nomaster`] : []), `link set dev ${newName} master ${old.master}`] : []),
    ...(oldExists ? old.addresses.map((address) => `address del ${address} dev ${oldName}`) : []),
    ...(old.up ? [`link set dev ${newName} up`] : []),
  ];
}

function tapSwitchError(oldName: string, newName: string, netns: string | undefined, old: TapHostConfig, detail: string): BatonError {
  return new BatonError(
    ManagerErrorCode.HostNetwork,
    `moving the host configuration from TAP '${oldName}' to '${newName}' failed: ${detail}; set the addresses on '${newName}' by hand (${old.addresses.join(', ') || 'none'})`,
    { tap: newName, oldTap: oldName, netns },
  );
}

/**
 * The switch done at once, in one `ip -batch` (used to give a TAP its configuration back).
 * `oldName` may be gone already (a TAP ends with the process that opened it): then the
 * configuration is only set on `newName`. Returns the ms it took.
 */
export function moveTapHostConfig(oldName: string, newName: string, netns: string | undefined, old: TapHostConfig): number {
  const begun = process.hrtime.bigint();
  const commands = tapSwitchCommands(oldName, newName, old, linkExists(oldName, netns));
  if (commands.length > 0) {
    try {
      execFileSync('ip', [...inNetns(netns), '-batch', '-'], { input: commands.join('\n') + '\n', encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw tapSwitchError(oldName, newName, netns, old, (e.stderr ?? '').trim() || e.message);
    }
  }
  log.info(`host configuration moved from ${oldName} to ${newName}`, { netns, addresses: old.addresses, master: old.master });
  return Number(process.hrtime.bigint() - begun) / 1e6;
}

/**
 * The switch prepared before the guest pauses: `ip -batch -` is started ahead and waits on its
 * stdin, so when the pause comes the switch costs one pipe write and a few netlink requests
 * (about 1 ms) rather than an iproute2 process start (5–60 ms on a loaded host), during which
 * frames for the guest would still reach the old TAP.
 */
export class PreparedTapSwitch {
  private readonly child: ChildProcess;
  private readonly exit: Promise<{ status: number | null; stderr: string; endedAt: bigint }>;
  private startedAt?: bigint;

  constructor(
    readonly oldName: string,
    readonly newName: string,
    readonly netns: string | undefined,
    readonly old: TapHostConfig,
  ) {
    this.child = spawn('ip', [...inNetns(netns), '-batch', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    this.child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    // An error event (no `ip`) also ends in close; the status then is null.
    this.child.on('error', (err) => (stderr += err.message));
    this.exit = new Promise((resolve) => this.child.once('close', (status) => resolve({ status, stderr, endedAt: process.hrtime.bigint() })));
    this.child.stdin?.on('error', () => undefined); // a dead ip is reported by finished()
  }

  get ran(): boolean {
    return this.startedAt !== undefined;
  }

  /** Switches now. */
  run(): void {
    if (this.startedAt !== undefined) return;
    this.startedAt = process.hrtime.bigint();
    this.child.stdin?.end(tapSwitchCommands(this.oldName, this.newName, this.old).join('\n') + '\n');
  }

  /** Not switching after all: the waiting ip ends having changed nothing. */
  async cancel(): Promise<void> {
    if (this.startedAt === undefined) this.child.stdin?.end();
    await this.exit;
  }

  /** Resolves with the ms from `run` until ip was done; rejects with what failed. */
  async finished(): Promise<number> {
    const { status, stderr, endedAt } = await this.exit;
    if (status !== 0) throw tapSwitchError(this.oldName, this.newName, this.netns, this.old, stderr.trim() || `ip -batch exited with status ${status}`);
    log.info(`host configuration moved from ${this.oldName} to ${this.newName}`, { netns: this.netns, addresses: this.old.addresses, master: this.old.master });
    return Number(endedAt - (this.startedAt ?? endedAt)) / 1e6;
  }
}

/** Deletes TAP `name` if it still exists (a persistent one outlives its hypervisor). */
export function deleteTapIfPresent(name: string, netns?: string): boolean {
  if (!linkExists(name, netns)) return false;
  ip([...inNetns(netns), 'link', 'del', 'dev', name], `deleting the old TAP '${name}'`);
  return true;
}

/**
 * A tap netdev: the host TAP queues behind a NIC, however their fds arrived — opened here
 * by name, handed in as numbers (inherited) or names (the monitor's getfd, through a
 * resolver), or attached later for an incoming local migration (`incoming-fds`). Every way
 * ends in {@link TapBackend.attachFds}, the one place fds are checked and configured.
 *
 * On failure nothing is left behind: fds opened here are closed and the script's
 * counterpart is not run. fds handed in are the caller's until attachFds accepts them.
 */
import fs from 'node:fs';
import { closeQuietly, native } from '../../native';
import { TAP } from '../../native/io';
import { BatonError } from '../../util/errors';
import { loggerFor } from '../../util/logger';
import { NetdevOptionError, TapNetdevConfig } from './netdev-options';

const log = loggerFor('tap');
const VHOST_NET_DEVICE = '/dev/vhost-net';
const SCRIPT_TIMEOUT_MS = 30_000;

/** Turns an fd= / fds= entry (a number, or a name from the monitor's getfd) into an open fd. */
export type FdResolver = (nameOrNumber: string) => number;

/** Accepts numbers only: inherited fds. Names need the monitor's resolver. */
export const inheritedFdResolver: FdResolver = (s) => {
  if (!/^\d+$/.test(s)) throw new BatonError('ENETDEV', `fd "${s}" is a name, but no monitor fd table was given to resolve it (pass it with getfd first)`);
  return Number(s);
};

export interface TapBackendState {
  ifname: string;
  queues: number;
  vnetHdrSize: number;
  offloadFlags: number;
}

export class TapBackend {
  /** One fd per queue pair; empty while an incoming-fds netdev waits. */
  fds: number[] = [];
  ifname = '';
  /** The TAP prepends a virtio-net header (IFF_VNET_HDR). */
  vnetHdr = false;
  vnetHdrSize = 0;
  offloadFlags = 0;
  /** Opened here by name (downscript runs and the fds close at the end). */
  private openedByName = false;

  private constructor(readonly config: TapNetdevConfig) {}

  get queues(): number {
    return this.config.queues;
  }

  get waitingForFds(): boolean {
    return this.fds.length === 0;
  }

  /** Creates the netdev the options describe. */
  static create(config: TapNetdevConfig, resolveFd: FdResolver = inheritedFdResolver): TapBackend {
    checkVhost(config);
    const b = new TapBackend(config);
    if (config.incomingFds) return b;
    if (config.fds) {
      const option = config.fd !== undefined ? 'fd' : 'fds';
      const fds = config.fds.map((s) => {
        try {
          return resolveFd(s);
        } catch (err) {
          throw new NetdevOptionError(config.id, option, (err as Error).message);
        }
      });
      b.attachFds(fds, option);
      return b;
    }
    b.openByName();
    return b;
  }

  private openByName(): void {
    const c = this.config;
    const opened: number[] = [];
    let ifname = c.ifname ?? '';
    try {
      for (let q = 0; q < c.queues; q++) {
        let r: { fd: number; ifname: string };
        try {
          r = native.tapOpen(ifname, { vnetHdr: c.vnetHdr !== false, multiQueue: c.queues > 1 });
        } catch (err) {
          throw openError(c, ifname, err as NodeJS.ErrnoException);
        }
        opened.push(r.fd);
        ifname = r.ifname;
      }
      this.openedByName = true;
      this.attachFds(opened, 'ifname');
      if (c.script !== 'no') runScript(c, 'script', c.script, this.ifname);
    } catch (err) {
      for (const fd of opened) closeQuietly(fd);
      this.fds = [];
      this.openedByName = false;
      throw err;
    }
  }

  /**
   * The one path by which TAP fds join this netdev: each fd must be open, a TAP (not TUN,
   * not a socket), all of the same interface, multi-queue when there are several, and agree
   * on the vnet header. They become non-blocking and get the netdev's send buffer. On
   * error nothing is changed and the fds stay the caller's.
   */
  attachFds(fds: number[], option: string): void {
    const c = this.config;
    if (this.fds.length) throw new NetdevOptionError(c.id, option, `already has ${this.fds.length} TAP fds attached`);
    if (fds.length !== c.queues) throw new NetdevOptionError(c.id, option, `${fds.length} fds for ${c.queues} queues; they must match`);
    let name = '';
    let vnetHdr: boolean | undefined;
    for (const fd of fds) {
      let type: string;
      try {
        type = native.fdType(fd);
      } catch {
        throw new NetdevOptionError(c.id, option, `fd ${fd} is not open`);
      }
      if (type !== 'char') throw new NetdevOptionError(c.id, option, `fd ${fd} is a ${type}, not a TAP device`);
      let iff: { ifname: string; flags: number };
      try {
        iff = native.tapGetIff(fd);
      } catch (err) {
        throw new NetdevOptionError(c.id, option, `fd ${fd} is not a TAP device (TUNGETIFF: ${(err as Error).message})`);
      }
      if (!(iff.flags & TAP.IFF_TAP)) throw new NetdevOptionError(c.id, option, `fd ${fd} is a TUN (layer 3) device "${iff.ifname}", not a TAP`);
      if (name && iff.ifname !== name) throw new NetdevOptionError(c.id, option, `fd ${fd} belongs to TAP "${iff.ifname}", the others to "${name}"`);
      name = iff.ifname;
      if (fds.length > 1 && !(iff.flags & TAP.IFF_MULTI_QUEUE)) {
        throw new NetdevOptionError(c.id, option, `${fds.length} fds given but TAP "${iff.ifname}" (fd ${fd}) was not created with multi_queue (IFF_MULTI_QUEUE)`);
      }
      const hdr = (iff.flags & TAP.IFF_VNET_HDR) !== 0;
      if (vnetHdr !== undefined && hdr !== vnetHdr) throw new NetdevOptionError(c.id, option, `vnet_hdr is not consistent across the TAP fds (fd ${fd} differs)`);
      vnetHdr = hdr;
    }
    if (c.vnetHdr === true && !vnetHdr) throw new NetdevOptionError(c.id, 'vnet_hdr', `vnet_hdr=on but TAP "${name}" has no IFF_VNET_HDR`);
    for (const fd of fds) {
      native.setNonBlocking(fd, true);
      if (!c.incomingFds) {
        try {
          native.tapSetSndbuf(fd, c.sndbuf);
        } catch (err) {
          throw new NetdevOptionError(c.id, 'sndbuf', `TUNSETSNDBUF ${c.sndbuf} on fd ${fd}: ${(err as Error).message}`);
        }
      }
    }
    this.fds = [...fds];
    this.ifname = name;
    this.vnetHdr = vnetHdr === true;
    this.vnetHdrSize = this.vnetHdr ? native.tapGetVnetHdrSz(fds[0]) : 0;
    this.offloadFlags = 0;
    log.info(`netdev ${c.id}: TAP ${name}, ${fds.length} queue(s) from ${option}, vnet_hdr ${this.vnetHdr ? 'on' : 'off'}`);
  }

  /** TUNSETVNETHDRSZ on every queue (only with a vnet header). */
  setVnetHdrSize(bytes: number): void {
    if (!this.vnetHdr) return;
    for (const fd of this.fds) native.tapSetVnetHdrSz(fd, bytes);
    this.vnetHdrSize = bytes;
  }

  /** TUNSETOFFLOAD on every queue: which offloaded packets (partial checksum, TSO) we may be given. */
  setOffload(flags: number): void {
    if (!this.vnetHdr) return;
    for (const fd of this.fds) native.tapSetOffload(fd, flags);
    this.offloadFlags = flags;
  }

  /** Offloads this TAP can hand us (TUN_F_* it accepts), given the vnet header is on. */
  get canOffload(): boolean {
    return this.vnetHdr;
  }

  save(): TapBackendState {
    return { ifname: this.ifname, queues: this.fds.length, vnetHdrSize: this.vnetHdrSize, offloadFlags: this.offloadFlags };
  }

  /** Applies saved header size and offloads to the TAP now attached (same TAP handed over, or a new one). */
  restore(s: TapBackendState): void {
    if (s.vnetHdrSize && this.vnetHdr) this.setVnetHdrSize(s.vnetHdrSize);
    this.setOffload(s.offloadFlags);
  }

  /** Hands the fds over (local migration): this netdev forgets them without closing. */
  releaseFds(): number[] {
    const fds = this.fds;
    this.fds = [];
    this.openedByName = false;
    return fds;
  }

  /** Closes the queues; runs downscript when this netdev opened the TAP by name (as QEMU does). */
  close(): void {
    const fds = this.fds;
    this.fds = [];
    for (const fd of fds) closeQuietly(fd);
    if (this.openedByName && this.config.downscript !== 'no') {
      try {
        runScript(this.config, 'downscript', this.config.downscript, this.ifname);
      } catch (err) {
        log.warn((err as Error).message);
      }
    }
    this.openedByName = false;
  }
}

/** vhost=on (or implied): refused clearly; baton-hv has no vhost-net data path, and this host has no /dev/vhost-net. */
function checkVhost(c: TapNetdevConfig): void {
  if (!c.vhost) return;
  const why = fs.existsSync(VHOST_NET_DEVICE)
    ? `${VHOST_NET_DEVICE} exists but baton-hv has no vhost-net data path yet`
    : `${VHOST_NET_DEVICE} is absent on this host (kernel without CONFIG_VHOST_NET)`;
  const option = c.given.includes('vhost') ? 'vhost' : c.given.includes('vhostforce') ? 'vhostforce' : c.given.includes('vhostfds') ? 'vhostfds' : 'vhostfd';
  throw new NetdevOptionError(c.id, option, `vhost-net requested but ${why}; use vhost=off (the userspace virtio-net data path)`);
}

function openError(c: TapNetdevConfig, ifname: string, err: NodeJS.ErrnoException): Error {
  const name = ifname ? `TAP "${ifname}"` : 'a new TAP';
  const hints: Record<string, string> = {
    EPERM: 'permission denied: creating or attaching a TAP needs CAP_NET_ADMIN (or a TAP owned by this user)',
    EACCES: 'permission denied opening /dev/net/tun',
    EBUSY: 'it is busy: another process holds it, or it is a single-queue TAP already attached',
    EINVAL: c.queues > 1
      ? 'the kernel refused: it exists without multi_queue; use queues=1 or recreate it with multi_queue'
      : 'the kernel refused: it exists with multi_queue (IFF_MULTI_QUEUE); use queues=N or pass its fd',
    ENOENT: '/dev/net/tun is missing (load the tun module)',
  };
  return new NetdevOptionError(c.id, 'ifname', `opening ${name} failed: ${hints[err.code ?? ''] ?? err.message}`);
}

function runScript(c: TapNetdevConfig, option: string, script: string, ifname: string): void {
  try {
    // Loaded here: only netdevs with a script need child_process (start-up time).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { execFileSync } = require('node:child_process') as typeof import('node:child_process');
    execFileSync(script, [ifname], { stdio: ['ignore', 'inherit', 'inherit'], timeout: SCRIPT_TIMEOUT_MS });
  } catch (err) {
    const e = err as { status?: number; code?: string; message: string };
    const how = e.status !== undefined && e.status !== null ? `exited with status ${e.status}` : e.code ?? e.message;
    throw new NetdevOptionError(c.id, option, `"${script} ${ifname}" failed: ${how}`);
  }
}


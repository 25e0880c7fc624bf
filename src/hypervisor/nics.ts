/**
 * The hypervisor's network front: netdevs (TAP backends, QEMU `-netdev tap`) and the NICs
 * on them (`-device virtio-net-pci`), by id, however they arrive — command line, machine
 * config, or the monitor's netdev_add/device_add. Devices can be added only before the
 * guest first runs (no PCI hot-plug), as the monitor tells a client that tries later.
 */
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { AttachedVirtioNet, attachVirtioNet } from './devices/virtio/attach';
import { splitNetdevString, parseNetdevTap } from './net/netdev-options';
import { FdResolver, TapBackend, inheritedFdResolver } from './net/tap-backend';
import { closeQuietly } from '../native';
import type { DeviceStateOwner } from './migration/vm-state';
import { Vm } from './vm';


const log = loggerFor('nics');

export interface NicDeviceOptions {
  id: string;
  netdev: string;
  mac?: string;
  mq?: boolean;
  /** Hand the TAP fds over on a local migration (QEMU's property name). Default on. */
  localMigration: boolean;
}

const DEVICE_OPTIONS = new Set(['driver', 'id', 'netdev', 'mac', 'mq', 'local-migration', 'bus', 'addr', 'romfile', 'disable-legacy', 'vectors']);

function onOff(value: string | boolean | undefined, option: string, dflt: boolean): boolean {
  if (value === undefined) return dflt;
  if (typeof value === 'boolean') return value;
  if (['on', 'true', 'yes'].includes(value)) return true;
  if (['off', 'false', 'no'].includes(value)) return false;
  throw new BatonError('EDEVICE', `device option ${option}: "${value}" is not on/off`);
}

/** `virtio-net-pci,netdev=n0,id=nic0,mac=...` or the QMP device_add arguments. */
export function parseNicDevice(input: string | Record<string, unknown>): NicDeviceOptions {
  const raw: Record<string, unknown> = typeof input === 'string' ? splitDeviceString(input) : { ...input };
  for (const k of Object.keys(raw)) {
    if (!DEVICE_OPTIONS.has(k)) throw new BatonError('EDEVICE', `device option ${k}: unknown for virtio-net-pci (known: ${[...DEVICE_OPTIONS].join(', ')})`);
  }
  if (raw.driver !== 'virtio-net-pci') {
    throw new BatonError('EDEVICE', `device driver "${String(raw.driver)}" is not supported; baton-hv offers virtio-net-pci`);
  }
  if (typeof raw.netdev !== 'string' || !raw.netdev) throw new BatonError('EDEVICE', 'device option netdev: is required for virtio-net-pci');
  if (raw.mac !== undefined && !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(String(raw.mac))) {
    throw new BatonError('EDEVICE', `device option mac: "${String(raw.mac)}" is not a MAC address (aa:bb:cc:dd:ee:ff)`);
  }
  if (raw['disable-legacy'] !== undefined && !onOff(raw['disable-legacy'] as string, 'disable-legacy', true)) {
    throw new BatonError('EDEVICE', 'device option disable-legacy=off: baton-hv offers a modern (virtio 1.0) device only');
  }
  return {
    id: typeof raw.id === 'string' && raw.id ? raw.id : `nic-${raw.netdev}`,
    netdev: raw.netdev,
    mac: raw.mac as string | undefined,
    mq: raw.mq === undefined ? undefined : onOff(raw.mq as string, 'mq', false),
    localMigration: onOff(raw['local-migration'] as string | boolean | undefined, 'local-migration', true),
  };
}

function splitDeviceString(text: string): Record<string, string> {
  const [driver, ...rest] = text.split(',');
  return { driver, ...(rest.length ? splitNetdevString(rest.join(',')) : {}) };
}

export interface NicInfo {
  id: string;
  netdev: string;
  mac: string;
  link: boolean;
  ifname: string;
  queues: number;
  waitingForFds: boolean;
}

export class Nics {
  readonly netdevs = new Map<string, TapBackend>();
  readonly devices = new Map<string, { opts: NicDeviceOptions; attached: AttachedVirtioNet }>();

  constructor(private readonly vm: Vm) {}

  addNetdev(input: string | Record<string, string | number | boolean>, resolveFd: FdResolver = inheritedFdResolver, opts: { incoming?: boolean } = {}): TapBackend {
    const config = parseNetdevTap(input);
    if (this.netdevs.has(config.id)) throw new BatonError('ENETDEV', `Duplicate ID '${config.id}' for netdev`);
    if (config.incomingFds && !opts.incoming) {
      throw new BatonError('ENETDEV', `netdev ${config.id}: incoming-fds: only valid while an incoming migration is expected (start with -incoming)`);
    }
    const backend = TapBackend.create(config, resolveFd);
    this.netdevs.set(config.id, backend);
    log.info(`netdev ${config.id}: ${backend.waitingForFds ? 'waiting for fds from the migration' : `tap ${backend.ifname}, ${backend.fds.length} queue(s)`}`);
    return backend;
  }

  delNetdev(id: string): void {
    const backend = this.netdevs.get(id);
    if (!backend) throw new BatonError('ENETDEV', `netdev '${id}' not found`);
    if ([...this.devices.values()].some((d) => d.opts.netdev === id)) {
      throw new BatonError('ENETDEV', `netdev '${id}' is in use by a device; device_del it first`);
    }
    backend.close();
    this.netdevs.delete(id);
  }

  addDevice(input: string | Record<string, unknown>): void {
    if (this.vm.status !== 'prelaunch' && this.vm.status !== 'inmigrate') {
      throw new BatonError('EHOTPLUG', 'PCI hot-plug is not supported: add devices before the guest starts (-S / prelaunch)');
    }
    const opts = parseNicDevice(input);
    if (this.devices.has(opts.id)) throw new BatonError('EDEVICE', `Duplicate device ID '${opts.id}'`);
    if (!this.netdevs.has(opts.netdev)) throw new BatonError('EDEVICE', `Property 'virtio-net-pci.netdev' can't find value '${opts.netdev}'`);
    if ([...this.devices.values()].some((d) => d.opts.netdev === opts.netdev)) {
      throw new BatonError('EDEVICE', `Property 'virtio-net-pci.netdev' can't take value '${opts.netdev}', it's in use`);
    }
    // An incoming VM's RAM is reserved from the start (Vm.reserveMemory): the device is built
    // now, not when the RAM fd arrives in the migration's set-up.
    this.attach(opts);
  }

  private attach(opts: NicDeviceOptions): void {
    const backend = this.netdevs.get(opts.netdev) as TapBackend;
    // The netdev's fds must reach the destination before the device that uses them.
    if (opts.localMigration) this.vm.extraDeviceState.push(this.netdevHandover(opts.netdev, backend));
    const attached = attachVirtioNet(this.vm, { id: opts.id, backend, mac: opts.mac, mq: opts.mq });
    this.devices.set(opts.id, { opts, attached });
    this.vm.addPciRoute(attached.intxRoute);
  }

  /**
   * The migration section that hands a netdev's TAP queues over (local migration): the
   * source sends its fds, the destination's `incoming-fds` netdev adopts them.
   */
  private netdevHandover(id: string, backend: TapBackend): DeviceStateOwner {
    return {
      section: `netdev/${id}`,
      version: 1,
      save: () => ({ ifname: backend.ifname, queues: backend.fds.length }),
      restore: () => undefined,
      fds: {
        send: () => backend.fds,
        receive: (fds) => {
          if (!backend.waitingForFds) {
            for (const fd of fds) closeQuietly(fd);
            throw new BatonError('ENETDEV', `netdev ${id} received TAP fds from the migration but was not created with incoming-fds=true`);
          }
          if (fds.length !== backend.queues) {
            for (const fd of fds) closeQuietly(fd);
            throw new BatonError('ENETDEV', `netdev ${id} expects ${backend.queues} queue fd(s); the source sent ${fds.length} (queues must match on both sides)`);
          }
          backend.attachFds(fds, 'incoming-fds');
        },
      },
    };
  }

  /**
   * After a completed local migration: the destination owns the TAP queues now. Forget our
   * copies without running downscripts (the TAP stays in use).
   */
  releaseHandedOver(): void {
    for (const { opts } of this.devices.values()) {
      if (!opts.localMigration) continue;
      for (const fd of this.netdevs.get(opts.netdev)?.releaseFds() ?? []) closeQuietly(fd);
    }
  }

  delDevice(id: string): void {
    const d = this.devices.get(id);
    if (!d) throw new BatonError('EDEVICE', `Device '${id}' not found`);
    if (this.vm.status !== 'prelaunch' && this.vm.status !== 'inmigrate') throw new BatonError('EHOTPLUG', 'PCI hot-unplug is not supported while the guest runs');
    d.attached.detach();
    const handover = this.vm.extraDeviceState.findIndex((o) => o.section === `netdev/${d.opts.netdev}`);
    if (handover >= 0) this.vm.extraDeviceState.splice(handover, 1);
    this.vm.pci.remove(d.attached.slot);
    this.vm.removePciRoute(d.attached.slot);
    this.devices.delete(id);
  }

  /**
   * The device property `local-migration` (QEMU's qom-set on /machine/peripheral/ID): on,
   * the NIC's TAP fds travel on a local migration; off, the destination brings its own TAP
   * (new-tap policy).
   */
  setLocalMigration(id: string, on: boolean): void {
    const d = this.devices.get(id);
    if (!d) throw new BatonError('EDEVICE', `Device '${id}' not found`);
    if (d.opts.localMigration === on) return;
    d.opts.localMigration = on;
    const section = `netdev/${d.opts.netdev}`;
    const at = this.vm.extraDeviceState.findIndex((o) => o.section === section);
    if (!on && at >= 0) this.vm.extraDeviceState.splice(at, 1);
    if (on && at < 0) {
      // Before the device's own section, so the fds arrive first.
      const devAt = this.vm.extraDeviceState.findIndex((o) => o.section === `dev/net/${id}`);
      this.vm.extraDeviceState.splice(devAt < 0 ? 0 : devAt, 0, this.netdevHandover(d.opts.netdev, this.netdevs.get(d.opts.netdev) as TapBackend));
    }
  }

  /** QEMU's set_link: the name is a device id or a netdev id. */
  setLink(name: string, up: boolean): void {
    const d = this.devices.get(name) ?? [...this.devices.values()].find((x) => x.opts.netdev === name);
    if (!d) throw new BatonError('EDEVICE', `Device '${name}' not found`);
    d.attached.device.setLink(up);
  }

  /** Netpass: the TAP queues of every NIC, the hold switch, and the replay. */
  readonly netpass = {
    sources: (): { id: string; fds: number[] }[] => [...this.devices.values()]
      .map((d) => ({ id: d.opts.netdev, fds: this.netdevs.get(d.opts.netdev)?.fds ?? [] }))
      .filter((x) => x.fds.length > 0),
    hold: (on: boolean): void => { for (const d of this.devices.values()) d.attached.device.holdRx(on); },
    replay: (netdevId: string, queues: Buffer[][]): void => {
      const d = [...this.devices.values()].find((x) => x.opts.netdev === netdevId);
      if (!d) throw new BatonError('ENETDEV', `netpass frames for netdev ${netdevId}, which this VM does not have`);
      queues.forEach((frames, q) => { if (frames.length) d.attached.device.replayRx(frames, q); });
    },
  };

  info(): NicInfo[] {
    return [...this.devices.values()].map(({ opts, attached }) => {
      const backend = this.netdevs.get(opts.netdev) as TapBackend;
      const s = attached.device.save();
      return {
        id: opts.id, netdev: opts.netdev, mac: s.mac, link: s.linkUp, ifname: backend.ifname,
        queues: backend.queues, waitingForFds: backend.waitingForFds,
      };
    });
  }

  closeAll(): void {
    for (const { attached } of this.devices.values()) attached.detach();
    for (const b of this.netdevs.values()) b.close();
    this.devices.clear();
    this.netdevs.clear();
  }
}

import path from 'node:path';
import type { CpuPinning, MachineConfig } from '../hypervisor/machine-config';
import { BatonPaths, domainFiles } from '../domain/paths';
import { Domain, interfacePolicy } from '../domain/types';
import { BatonError } from '../util/errors';
import { ManagerErrorCode } from './errors';

/**
 * Domain (plain data from the XML) → the MachineConfig baton-hv reads with `--config`.
 * Every file the hypervisor creates lives in the run directory (sockets, file-backed RAM)
 * or the log directory (serial log), named after the domain (src/domain/paths.ts).
 */

/** Where the manager writes a domain's machine config for baton-hv (not `.json`: the run dir's `*.json` are runtime records). */
export function machineConfigFile(paths: BatonPaths, name: string): string {
  return path.join(paths.runDir, `${name}.hv-config`);
}

/** RAM file of a domain with `<memoryBacking><source type='file'/>`. */
export function memoryFile(paths: BatonPaths, name: string): string {
  return path.join(paths.runDir, `${name}.ram`);
}

/** QEMU-style ids of interface `index`: `-netdev ...,id=net0` and `-device ...,id=nic0`. */
export function nicIds(index: number): { netdev: string; device: string } {
  return { netdev: `net${index}`, device: `nic${index}` };
}

function unsupportedAction(element: string, value: string, supported: string[]): never {
  throw new BatonError(
    ManagerErrorCode.Unsupported,
    `/domain/${element}: '${value}' is not supported by baton-hv yet (it supports ${supported.join(', ')}); change it with 'baton vm define'`,
    { path: `/domain/${element}` },
  );
}

/** How a migration destination gets the TAP of one interface. */
export type IncomingNicBackend =
  /** local-fd: the source hands its open TAP queues over; the destination opens nothing. */
  | { kind: 'incoming-fds' }
  /** new-tap: the destination opens a TAP of its own under this (fresh) name. */
  | { kind: 'open'; ifname: string };

/** The destination side of a migration (migrate.ts): same machine, its own sockets and TAP plan. */
export interface IncomingMachineOptions {
  /** Temporary listening sockets, renamed onto the canonical paths once the source is gone. */
  monitorSocket: string;
  consoleSocket: string;
  /** One entry per interface, in the domain's order. */
  nics: IncomingNicBackend[];
}

export interface MachineConfigOptions {
  /** Start with the vCPUs stopped (the manager always does, and sends `cont` after setting up the host side). */
  startPaused: boolean;
  /** Build the destination of a migration (`-incoming defer`) instead of a fresh boot. */
  incoming?: IncomingMachineOptions;
}

/**
 * Whether the NIC of an interface hands its TAP fds over on a local migration (the device
 * property `local-migration`). Off for interfaces whose policy is `new-tap`: their source must
 * keep its fds so that RAM can still travel by fd (`local`) while the destination opens a TAP
 * of its own. Derived from the definition alone, so every process of a domain (the first and
 * each migration's destination) has the same setting and the next migration can rely on it.
 */
export function nicHandsOverFds(domain: Domain, index: number): boolean {
  return interfacePolicy(domain, domain.interfaces[index]) !== 'new-tap';
}

export function machineConfigFromDomain(domain: Domain, paths: BatonPaths, options: MachineConfigOptions): MachineConfig {
  const files = domainFiles(paths, domain.name);
  const onPoweroff = domain.onPoweroff === 'restart' ? unsupportedAction('on_poweroff', 'restart', ['destroy', 'preserve']) : domain.onPoweroff;
  const onReboot = domain.onReboot === 'preserve' ? unsupportedAction('on_reboot', 'preserve', ['restart', 'destroy']) : domain.onReboot;
  const onCrash = domain.onCrash === 'restart' ? unsupportedAction('on_crash', 'restart', ['destroy', 'preserve']) : domain.onCrash;

  const netdevs: string[] = [];
  const devices: string[] = [];
  const incoming = options.incoming;
  if (incoming && incoming.nics.length !== domain.interfaces.length) {
    throw new Error(`incoming NIC plan has ${incoming.nics.length} entries for ${domain.interfaces.length} interfaces of '${domain.name}'`);
  }
  domain.interfaces.forEach((nic, index) => {
    const ids = nicIds(index);
    const queues = nic.driver?.queues ?? 1;
    const backend: IncomingNicBackend = incoming ? incoming.nics[index] : { kind: 'open', ifname: nic.tapName };
    // script=no,downscript=no: the manager, not a script, configures the host side. An
    // incoming-fds netdev names no TAP: it adopts the one the source hands over.
    let netdev = backend.kind === 'incoming-fds'
      ? `tap,id=${ids.netdev},incoming-fds=true,script=no,downscript=no`
      : `tap,id=${ids.netdev},ifname=${backend.ifname},script=no,downscript=no`;
    if (queues > 1) netdev += `,queues=${queues}`;
    // driver name='vhost' asks for vhost-net; baton-hv refuses it clearly where it cannot.
    if (nic.driver?.name === 'vhost') netdev += ',vhost=on';
    netdevs.push(netdev);
    let device = `virtio-net-pci,netdev=${ids.netdev},id=${ids.device},mac=${nic.mac}`;
    if (queues > 1) device += ',mq=on';
    // A migration's destination adopts fds exactly for its incoming-fds NICs (the property
    // governs receiving as well as sending); the next migration sets it per its own policy.
    const handsOverFds = incoming ? backend.kind === 'incoming-fds' : nicHandsOverFds(domain, index);
    if (!handsOverFds) device += ',local-migration=off';
    devices.push(device);
  });

  const tune = domain.cputune;
  const cpuPinning: CpuPinning | undefined = tune && { vcpus: tune.vcpuPins, ...(tune.emulatorPin ? { emulator: tune.emulatorPin } : {}) };

  return {
    name: domain.name,
    uuid: domain.uuid,
    memory: {
      sizeMiB: domain.memoryKiB / 1024,
      backing: domain.memoryBacking.source,
      ...(domain.memoryBacking.source === 'file' ? { path: memoryFile(paths, domain.name) } : {}),
    },
    vcpus: domain.vcpus,
    ...(cpuPinning ? { cpuPinning } : {}),
    cpuModel: 'baton-pvm',
    kernel: domain.os.kernel,
    ...(domain.os.initrd !== undefined ? { initrd: domain.os.initrd } : {}),
    cmdline: domain.os.cmdline ?? '',
    // The serial log is always written (a domain's own <log file> gets a link in the log dir,
    // see supervisor.ts); the console socket exists only when the domain has a <serial>.
    serial: {
      logFile: domain.serial?.log?.file ?? files.serialLog,
      ...(domain.serial ? { socket: incoming?.consoleSocket ?? files.consoleSocket } : {}),
    },
    netdevs,
    devices,
    monitor: { socket: incoming?.monitorSocket ?? files.monitorSocket },
    startPaused: options.startPaused,
    ...(incoming ? { incoming: 'defer' } : {}),
    onPoweroff,
    onReboot,
    onCrash,
  };
}

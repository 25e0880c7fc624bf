/**
 * The domain model: plain data, no XML. `xml.ts` converts libvirt-compatible domain XML
 * to and from these types; everything else in Baton (store, manager, hypervisor) only
 * ever sees these.
 */

/** How a NIC's TAP backend moves during a migration (see DESIGN.md, "three network policies"). */
export type MigrationPolicy = 'local-fd' | 'new-tap' | 'netpass' | 'auto';
export const MIGRATION_POLICIES: readonly MigrationPolicy[] = ['local-fd', 'new-tap', 'netpass', 'auto'];

/**
 * What happens when the guest powers off, reboots or crashes (libvirt's on_poweroff,
 * on_reboot, on_crash). libvirt also has rename-restart and coredump-*; Baton refuses those.
 */
export type LifecycleAction = 'destroy' | 'restart' | 'preserve';
export const LIFECYCLE_ACTIONS: readonly LifecycleAction[] = ['destroy', 'restart', 'preserve'];

/** Guest RAM backing. Baton always maps guest RAM from an fd so a local migration can hand it over. */
export interface MemoryBacking {
  /** memfd: anonymous memory file; file: a file in the run directory. */
  source: 'memfd' | 'file';
  /** shared: MAP_SHARED (required for RAM-by-fd migration); private: MAP_PRIVATE. */
  access: 'shared' | 'private';
}

/** Direct kernel boot: Baton has no firmware and no disks. */
export interface OsBoot {
  arch: 'x86_64';
  /** Machine type; Baton has exactly one. */
  machine: typeof BATON_MACHINE;
  /** Absolute path of the kernel (bzImage or PVH ELF). */
  kernel: string;
  /** Absolute path of the initramfs, when there is one. */
  initrd?: string;
  cmdline?: string;
}
export const BATON_MACHINE = 'baton';

/** `<driver>` of a virtio NIC. */
export interface InterfaceDriver {
  /** vhost: in-kernel data path (needs /dev/vhost-net); qemu: the hypervisor's own. */
  name: 'vhost' | 'qemu';
  /** Number of queue pairs (TAP opened with IFF_MULTI_QUEUE when > 1). */
  queues: number;
}

/** `<interface type='ethernet'>`: a virtio-net NIC backed by a host TAP device. */
export interface Interface {
  /** Host TAP device name (`<target dev>`). */
  tapName: string;
  /** true: Baton creates and removes the TAP; false: it must already exist. */
  managed: boolean;
  /** Guest MAC, lower case `xx:xx:xx:xx:xx:xx`. */
  mac: string;
  model: 'virtio';
  driver?: InterfaceDriver;
  /** Per-interface override of the domain's migration policy (from the Baton metadata). */
  migrationPolicy?: MigrationPolicy;
  /**
   * Network namespace the manager moves the TAP into once the hypervisor holds it open
   * (created when missing, left in place when the domain stops). From the Baton metadata.
   */
  netns?: string;
  /** Host-side IPv4 address with prefix, e.g. `10.99.0.1/24`, set on the TAP (inside `netns` when given). */
  hostAddress?: string;
}

/** Where a serial port's output is also written (`<log file append>`). */
export interface SerialLog {
  file: string;
  append: boolean;
}

/**
 * The guest's serial port (an 8250 UART at COM1), reachable through a pty. In the XML it
 * appears as `<serial type='pty'>` plus the `<console type='pty'>` alias libvirt adds.
 */
export interface Serial {
  type: 'pty';
  port: 0;
  log?: SerialLog;
}

/**
 * `<cputune>`: the host CPUs each vCPU's thread, and the hypervisor's other threads, may run
 * on (libvirt's vcpupin and emulatorpin; CPU lists are sorted and unique).
 */
export interface CpuTune {
  vcpuPins: { vcpu: number; cpus: number[] }[];
  /** Every thread that is not a vCPU: device models, monitor, migration. */
  emulatorPin?: number[];
}

export interface Domain {
  type: 'kvm';
  name: string;
  /** RFC 4122 UUID, lower case; generated at parse time when the XML has none. */
  uuid: string;
  title?: string;
  description?: string;
  /** Guest RAM in KiB (a whole number of MiB, see xml.ts). */
  memoryKiB: number;
  memoryBacking: MemoryBacking;
  vcpus: number;
  cputune?: CpuTune;
  os: OsBoot;
  onPoweroff: LifecycleAction;
  onReboot: LifecycleAction;
  onCrash: LifecycleAction;
  interfaces: Interface[];
  /** The serial console, when the domain has one. */
  serial?: Serial;
  /** The domain's network migration policy (default `auto`). */
  migrationPolicy: MigrationPolicy;
}

/** Limits Baton accepts (checked in xml.ts). */
export const DOMAIN_LIMITS = {
  minVcpus: 1,
  maxVcpus: 8,
  minMemoryKiB: 128 * 1024,
  maxMemoryKiB: 16 * 1024 * 1024,
  maxInterfaces: 8,
  maxQueues: 8,
  maxNameLength: 64,
  /** Linux IFNAMSIZ is 16 including the terminating NUL. */
  maxTapNameLength: 15,
} as const;

/** Policy used for one interface: its own override, else the domain's. */
export function interfacePolicy(domain: Domain, nic: Interface): MigrationPolicy {
  return nic.migrationPolicy ?? domain.migrationPolicy;
}

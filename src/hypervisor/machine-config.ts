/**
 * The machine description baton-hv starts from: what the manager derives from domain XML,
 * or what a person writes by hand (JSON file or command-line flags). Validated here so
 * every impossible value is refused with the field's name before any KVM object exists.
 */
import { BatonError } from '../util/errors';
import { MAX_CPU } from '../util/cpuset';
import { CPU_MODELS } from './x86/cpu-model';

export interface MachineConfig {
  name: string;
  uuid?: string;
  memory: { sizeMiB: number; backing: 'memfd' | 'file'; path?: string };
  vcpus: number;
  /** Host CPUs for vCPU threads and for every other thread (libvirt's vcpupin, emulatorpin). */
  cpuPinning?: CpuPinning;
  cpuModel: string;
  kernel: string;
  initrd?: string;
  cmdline: string;
  serial: { socket?: string; logFile?: string };
  /** QEMU `-netdev` option strings (tap only), e.g. "tap,id=n0,ifname=tap0,script=no,downscript=no". */
  netdevs: string[];
  /** QEMU `-device` option strings (virtio-net-pci only), e.g. "virtio-net-pci,netdev=n0,id=nic0". */
  devices: string[];
  monitor: { socket: string };
  /** Start with vCPUs stopped (QEMU's -S): status `prelaunch` until `cont`. */
  startPaused: boolean;
  /** QEMU's -incoming: 'defer' (wait for migrate-incoming) or a URI. */
  incoming?: string;
  onPoweroff: 'destroy' | 'preserve';
  onReboot: 'restart' | 'destroy';
  onCrash: 'destroy' | 'preserve';
}

export interface CpuPinning {
  vcpus: { vcpu: number; cpus: number[] }[];
  emulator?: number[];
}

export const MIN_MEMORY_MIB = 128;
export const MAX_MEMORY_MIB = 16 * 1024;
export const MAX_VCPUS = 8;

function fail(field: string, why: string): never {
  throw new BatonError('ECONFIG', `machine config: ${field} ${why}`, { field });
}

export function validateMachineConfig(input: Partial<MachineConfig>): MachineConfig {
  if (!input.name || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(input.name)) fail('name', 'must be 1-64 characters of letters, digits, "_.-"');
  const mem = input.memory;
  if (!mem || !Number.isInteger(mem.sizeMiB)) fail('memory.sizeMiB', 'must be an integer number of MiB');
  if (mem.sizeMiB < MIN_MEMORY_MIB || mem.sizeMiB > MAX_MEMORY_MIB) fail('memory.sizeMiB', `is ${mem.sizeMiB}; must be ${MIN_MEMORY_MIB}-${MAX_MEMORY_MIB}`);
  if (mem.backing !== 'memfd' && mem.backing !== 'file') fail('memory.backing', 'must be "memfd" or "file"');
  if (mem.backing === 'file' && !mem.path) fail('memory.path', 'is required with file backing');
  if (!Number.isInteger(input.vcpus) || (input.vcpus as number) < 1 || (input.vcpus as number) > MAX_VCPUS) {
    fail('vcpus', `is ${input.vcpus}; must be 1-${MAX_VCPUS}`);
  }
  const cpuPinning = input.cpuPinning ? validateCpuPinning(input.cpuPinning, input.vcpus as number) : undefined;
  const cpuModel = input.cpuModel ?? 'baton-pvm';
  if (!CPU_MODELS.includes(cpuModel as never)) fail('cpuModel', `"${cpuModel}" is unknown (known: ${CPU_MODELS.join(', ')})`);
  if (!input.kernel) fail('kernel', 'is required');
  if (!input.monitor?.socket) fail('monitor.socket', 'is required');
  return {
    name: input.name, uuid: input.uuid, memory: mem, vcpus: input.vcpus as number, ...(cpuPinning ? { cpuPinning } : {}), cpuModel,
    kernel: input.kernel, initrd: input.initrd, cmdline: input.cmdline ?? '',
    serial: input.serial ?? {}, netdevs: input.netdevs ?? [], devices: input.devices ?? [], monitor: input.monitor, startPaused: input.startPaused ?? false,
    incoming: input.incoming, onPoweroff: input.onPoweroff ?? 'destroy', onReboot: input.onReboot ?? 'restart',
    onCrash: input.onCrash ?? 'destroy',
  };
}

function validateCpus(field: string, cpus: unknown): number[] {
  if (!Array.isArray(cpus) || cpus.length === 0 || !cpus.every((c) => Number.isInteger(c) && c >= 0 && c <= MAX_CPU)) {
    fail(field, `must be a non-empty list of host CPU numbers 0-${MAX_CPU}`);
  }
  return [...new Set(cpus as number[])].sort((a, b) => a - b);
}

function validateCpuPinning(pinning: CpuPinning, vcpus: number): CpuPinning {
  if (typeof pinning !== 'object' || (pinning.vcpus !== undefined && !Array.isArray(pinning.vcpus))) {
    fail('cpuPinning', 'must be { vcpus: [{ vcpu, cpus }], emulator? }');
  }
  const seen = new Set<number>();
  const pins = (pinning.vcpus ?? []).map((pin, i) => {
    if (!Number.isInteger(pin?.vcpu) || pin.vcpu < 0 || pin.vcpu >= vcpus) fail(`cpuPinning.vcpus[${i}].vcpu`, `is ${pin?.vcpu}; the machine has vCPUs 0-${vcpus - 1}`);
    if (seen.has(pin.vcpu)) fail(`cpuPinning.vcpus[${i}].vcpu`, `pins vCPU ${pin.vcpu} a second time`);
    seen.add(pin.vcpu);
    return { vcpu: pin.vcpu, cpus: validateCpus(`cpuPinning.vcpus[${i}].cpus`, pin.cpus) };
  });
  return { vcpus: pins, ...(pinning.emulator !== undefined ? { emulator: validateCpus('cpuPinning.emulator', pinning.emulator) } : {}) };
}

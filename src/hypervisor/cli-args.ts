/**
 * baton-hv's command line: a machine description as a JSON file (`--config`, what the
 * manager writes) and/or QEMU-like flags for people running it by hand. Flags override
 * the file. Unknown flags and bad values are errors naming the flag.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { parseCpuset } from '../util/cpuset';
import { BatonError } from '../util/errors';
import { MachineConfig, validateMachineConfig } from './machine-config';

export const USAGE = `usage: baton-hv [--config FILE.json] [options]
  --name NAME             domain name (default: vm)
  --kernel PATH           PVH ELF or bzImage
  --initrd PATH
  --append CMDLINE        kernel command line
  -m, --memory MIB        guest RAM in MiB (128-16384)
  --mem-path PATH         back RAM with this shared file instead of a memfd
  --smp N                 vCPUs (1-8)
  --cpu MODEL             host | baton-pvm (default)
  --vcpupin VCPU:CPUSET   host CPUs for one vCPU's thread, libvirt's cpuset syntax (repeatable)
  --emulatorpin CPUSET    host CPUs for every other thread
  --monitor PATH          QMP socket (required)
  --serial-socket PATH    console socket
  --serial-log PATH       append the guest's serial output here
  --netdev tap,id=ID,...  a TAP backend, QEMU's options (repeatable)
  --device virtio-net-pci,netdev=ID[,id=,mac=,mq=]   a NIC (repeatable)
  -S                      start with vCPUs stopped (status prelaunch)
  --incoming URI          defer | file:PATH | unix:PATH
  --no-reboot             a guest reboot ends the VM
`;

export function parseHvArgs(argv: string[]): MachineConfig {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        config: { type: 'string' }, name: { type: 'string' }, kernel: { type: 'string' }, initrd: { type: 'string' },
        append: { type: 'string' }, memory: { type: 'string', short: 'm' }, 'mem-path': { type: 'string' },
        smp: { type: 'string' }, cpu: { type: 'string' }, monitor: { type: 'string' },
        vcpupin: { type: 'string', multiple: true }, emulatorpin: { type: 'string' },
        'serial-socket': { type: 'string' }, 'serial-log': { type: 'string' }, S: { type: 'boolean', short: 'S' },
        netdev: { type: 'string', multiple: true }, device: { type: 'string', multiple: true },
        incoming: { type: 'string' }, 'no-reboot': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new BatonError('EUSAGE', `${(err as Error).message}\n${USAGE}`);
  }
  const v = parsed.values;
  if (v.help) throw new BatonError('EHELP', USAGE);
  let base: Partial<MachineConfig> = {};
  if (v.config) {
    try {
      base = JSON.parse(fs.readFileSync(v.config, 'utf8'));
    } catch (err) {
      throw new BatonError('ECONFIG', `cannot read machine config ${v.config}: ${(err as Error).message}`);
    }
  }
  const int = (flag: string, s: string | undefined) => {
    if (s === undefined) return undefined;
    if (!/^\d+$/.test(s)) throw new BatonError('EUSAGE', `--${flag} expects a whole number, got "${s}"`);
    return Number(s);
  };
  const memMiB = int('memory', v.memory);
  const memory = memMiB !== undefined || v['mem-path']
    ? { sizeMiB: memMiB ?? base.memory?.sizeMiB ?? 256, backing: v['mem-path'] ? 'file' as const : 'memfd' as const, path: v['mem-path'] }
    : base.memory ?? { sizeMiB: 256, backing: 'memfd' as const };
  const cpuset = (flag: string, text: string) => {
    try {
      return parseCpuset(text);
    } catch (err) {
      throw new BatonError('EUSAGE', `--${flag} '${text}': ${(err as Error).message}`);
    }
  };
  const vcpuPins = (v.vcpupin ?? []).map((arg) => {
    const m = /^(\d+):(.+)$/.exec(arg);
    if (!m) throw new BatonError('EUSAGE', `--vcpupin expects VCPU:CPUSET (e.g. 0:1), got "${arg}"`);
    return { vcpu: Number(m[1]), cpus: cpuset('vcpupin', m[2]) };
  });
  const cpuPinning = vcpuPins.length > 0 || v.emulatorpin !== undefined
    ? { vcpus: vcpuPins, ...(v.emulatorpin !== undefined ? { emulator: cpuset('emulatorpin', v.emulatorpin) } : {}) }
    : base.cpuPinning;
  return validateMachineConfig({
    ...base,
    name: v.name ?? base.name ?? 'vm',
    kernel: v.kernel ?? base.kernel,
    initrd: v.initrd ?? base.initrd,
    cmdline: v.append ?? base.cmdline,
    memory,
    vcpus: int('smp', v.smp) ?? base.vcpus ?? 1,
    cpuPinning,
    cpuModel: v.cpu ?? base.cpuModel,
    monitor: v.monitor ? { socket: v.monitor } : base.monitor,
    serial: { ...base.serial, ...(v['serial-socket'] ? { socket: v['serial-socket'] } : {}), ...(v['serial-log'] ? { logFile: v['serial-log'] } : {}) },
    netdevs: [...(base.netdevs ?? []), ...(v.netdev ?? [])],
    devices: [...(base.devices ?? []), ...(v.device ?? [])],
    startPaused: v.S ?? base.startPaused,
    incoming: v.incoming ?? base.incoming,
    onReboot: v['no-reboot'] ? 'destroy' : base.onReboot,
  });
}

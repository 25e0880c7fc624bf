import { validateMachineConfig } from '../../src/hypervisor/machine-config';

/** A machine config as a --config JSON file could hold it, with this cpuPinning. */
const withPinning = (cpuPinning: unknown) =>
  validateMachineConfig({ name: 'vm', memory: { sizeMiB: 128, backing: 'memfd' }, vcpus: 2, kernel: '/k', monitor: { socket: '/m' }, cpuPinning } as never);

describe('machine config: cpuPinning', () => {
  it('keeps pins as sorted, unique CPU lists', () => {
    expect(withPinning({ vcpus: [{ vcpu: 1, cpus: [3, 1, 3] }], emulator: [2, 0] }).cpuPinning).toEqual({ vcpus: [{ vcpu: 1, cpus: [1, 3] }], emulator: [0, 2] });
  });

  it.each([
    ['vcpus not a list', { vcpus: 'all' }, 'machine config: cpuPinning must be { vcpus: [{ vcpu, cpus }], emulator? }'],
    ['a null pin', { vcpus: [null] }, 'cpuPinning.vcpus[0].vcpu is undefined; the machine has vCPUs 0-1'],
    ['a vCPU the machine lacks', { vcpus: [{ vcpu: 2, cpus: [0] }] }, 'cpuPinning.vcpus[0].vcpu is 2; the machine has vCPUs 0-1'],
    ['no CPUs', { vcpus: [{ vcpu: 0, cpus: [] }] }, 'cpuPinning.vcpus[0].cpus must be a non-empty list of host CPU numbers 0-1023'],
    ['a CPU out of range', { vcpus: [], emulator: [4096] }, 'cpuPinning.emulator must be a non-empty list of host CPU numbers 0-1023'],
    ['a fractional CPU', { vcpus: [], emulator: [0.5] }, 'cpuPinning.emulator must be a non-empty list'],
  ])('refuses %s, naming the field', (_what, pinning, message) => {
    expect(() => withPinning(pinning)).toThrow(message);
  });
});

import { machineConfigFromDomain } from '../../src/manager/machine-config-from-domain';
import { parseDomainXml } from '../../src/domain/xml';

const PATHS = { stateDir: '/s', runDir: '/r', logDir: '/l' };
const xml = (tune: string): string =>
  `<domain type='kvm'><name>pin</name><memory unit='MiB'>128</memory><vcpu>2</vcpu>${tune}<os><type>hvm</type><kernel>/k</kernel></os></domain>`;

describe('machineConfigFromDomain: <cputune>', () => {
  it('hands vcpupin and emulatorpin to baton-hv as cpuPinning', () => {
    const domain = parseDomainXml(xml("<cputune><vcpupin vcpu='1' cpuset='2-3'/><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='4'/></cputune>"));
    const config = machineConfigFromDomain(domain, PATHS, { startPaused: true });
    expect(config.cpuPinning).toEqual({ vcpus: [{ vcpu: 0, cpus: [0] }, { vcpu: 1, cpus: [2, 3] }], emulator: [4] });
  });

  it('leaves cpuPinning out without <cputune>, and emulator out without <emulatorpin>', () => {
    expect(machineConfigFromDomain(parseDomainXml(xml('')), PATHS, { startPaused: true })).not.toHaveProperty('cpuPinning');
    const config = machineConfigFromDomain(parseDomainXml(xml("<cputune><vcpupin vcpu='0' cpuset='1'/></cputune>")), PATHS, { startPaused: true });
    expect(config.cpuPinning).toEqual({ vcpus: [{ vcpu: 0, cpus: [1] }] });
  });
});

// Real components for the virtio-net tests: a paused Vm booted from the test guest ELF
// (status prelaunch; its vCPUs never run, the test is the driver), and TAPs created by
// name in the root namespace, then moved into a namespace the test owns.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { validateMachineConfig } from '../../src/hypervisor/machine-config';
import { Vm } from '../../src/hypervisor/vm';
import { TapBackend } from '../../src/hypervisor/net/tap-backend';
import { parseNetdevTap } from '../../src/hypervisor/net/netdev-options';

export const GUEST_ELF = path.join(__dirname, '..', 'guest', 'build', 'testguest.elf');

export function buildGuest(): void {
  execFileSync('make', ['-C', path.join(__dirname, '..', 'guest')], { stdio: 'inherit' });
  if (!fs.existsSync(GUEST_ELF)) throw new Error(`${GUEST_ELF} was not built`);
}

export function machineConfig(name: string) {
  return validateMachineConfig({
    name, memory: { sizeMiB: 128, backing: 'memfd' }, vcpus: 1, kernel: GUEST_ELF, cmdline: 'counter',
    monitor: { socket: `/tmp/${name}.qmp` }, startPaused: true,
  });
}

export function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Names of what a test run creates, pid-suffixed. */
export class NetFixture {
  readonly netns = `bt-vnet-${process.pid}`;
  private readonly taps = new Set<string>();

  constructor() {
    ip('netns', 'add', this.netns);
    ip('-n', this.netns, 'link', 'set', 'lo', 'up');
    execFileSync('ip', ['netns', 'exec', this.netns, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  }

  tapName(n: number): string {
    return `bt${process.pid % 10_000_000}v${n}`;
  }

  /** Opens TAP n by name (netdev options `extra`), moves it into the namespace with 10.99.<subnet>.1/24, up. */
  openTap(n: number, subnet: number, extra = ''): TapBackend {
    const ifname = this.tapName(n);
    const backend = TapBackend.create(parseNetdevTap(`tap,id=hn${n},ifname=${ifname}${extra}`));
    this.taps.add(ifname);
    ip('link', 'set', ifname, 'netns', this.netns);
    ip('-n', this.netns, 'addr', 'add', `10.99.${subnet}.1/24`, 'dev', ifname);
    ip('-n', this.netns, 'link', 'set', ifname, 'up');
    return backend;
  }

  hostMac(ifname: string): string {
    const [link] = JSON.parse(ip('-n', this.netns, '-j', 'link', 'show', ifname)) as { address: string }[];
    return link.address;
  }

  cleanup(): void {
    try { ip('netns', 'del', this.netns); } catch { /* gone */ }
    for (const t of this.taps) {
      try { ip('link', 'del', t); } catch { /* closed with its fds, or inside the deleted namespace */ }
    }
  }
}

export function createVm(name: string, memFd?: number): Vm {
  return Vm.create(machineConfig(name), memFd === undefined ? {} : { memFd, loadImage: false });
}

// virtio-net end to end with real parts: a real (paused) Vm's RAM and KVM ioeventfd/irqfd
// and MSI routing, a real TAP in a network namespace whose kernel answers ARP and ping.
// The test is the guest's driver (driver.ts).
import { native } from '../../src/native';
import { attachVirtioNet, AttachedVirtioNet } from '../../src/hypervisor/devices/virtio/attach';
import {
  COMMON_CFG, FeatureBits, NET_F, STATUS_DEVICE_NEEDS_RESET, VIRTIO_NET_S_LINK_UP, hasFeature,
} from '../../src/hypervisor/devices/virtio/constants';
import { BAR_LAYOUT } from '../../src/hypervisor/devices/virtio/virtio-pci';
import { TapBackend } from '../../src/hypervisor/net/tap-backend';
import { parseNetdevTap } from '../../src/hypervisor/net/netdev-options';
import type { Vm } from '../../src/hypervisor/vm';
import * as frames from '../native/fixtures/frames';
import { TestDriver, UsedElem, enableLapic, lapicIrrHas, waitFor } from './driver';
import { NetFixture, buildGuest, createVm } from './harness';

const GUEST_MAC = '52:54:00:12:34:56';
const RX = 0, TX = 1;

let net: NetFixture;
const vms: Vm[] = [];
const attached: AttachedVirtioNet[] = [];
const backends: TapBackend[] = [];

beforeAll(() => {
  buildGuest();
  net = new NetFixture();
});

afterAll(() => {
  for (const a of attached) { try { a.detach(); } catch { /* already */ } }
  for (const b of backends) b.close();
  for (const vm of vms) vm.destroy();
  net?.cleanup();
});

function newVm(name: string, memFd?: number): Vm {
  const vm = createVm(`${name}-${process.pid}`, memFd);
  vms.push(vm);
  return vm;
}

function attach(vm: Vm, backend: TapBackend, id = 'net0', slot?: number): AttachedVirtioNet {
  const a = attachVirtioNet(vm, { id, backend, slot });
  attached.push(a);
  return a;
}

const ping = (hostMac: string, subnet: number, guestIp: string, seq: number, id = 0x77) => frames.icmpEchoRequest({
  srcMac: GUEST_MAC, dstMac: hostMac, srcIp: guestIp, dstIp: `10.99.${subnet}.1`, id, seq, data: Buffer.from(`baton virtio ${seq}`),
});

/** Collects received frames from RX queue `q` until `want` matches, reposting buffers as they are used. */
async function receive(d: TestDriver, q: number, want: (f: frames.ParsedFrame[]) => boolean, what: string, timeoutMs = 10_000):
  Promise<{ frames: frames.ParsedFrame[]; used: UsedElem[] }> {
  const got: frames.ParsedFrame[] = [];
  const used: UsedElem[] = [];
  await waitFor(() => {
    for (const e of d.takeUsed(q)) {
      used.push(e);
      const { frame, numBuffers } = d.rxFrame(e);
      expect(numBuffers).toBe(1);
      got.push(frames.parseFrame(Buffer.from(frame)));
      d.postRx(q, 1);
      d.notifyMmio(q);
    }
    return want(got);
  }, timeoutMs, what);
  return { frames: got, used };
}

describe('virtio-net on a TAP (single queue)', () => {
  let vm: Vm;
  let a: AttachedVirtioNet;
  let d: TestDriver;
  let hostMac = '';
  let negotiated: FeatureBits;

  beforeAll(() => {
    vm = newVm('vnet1');
    const backend = net.openTap(1, 1);
    backends.push(backend);
    hostMac = net.hostMac(backend.ifname);
    a = attach(vm, backend);
    a.device.setRunning(true); // the VM stays in prelaunch; the test drives the NIC as if it ran
    d = new TestDriver(vm, a.slot);
  });

  it('presents a modern virtio-net PCI function with its capabilities in BAR 0', () => {
    expect(vm.status).toBe('prelaunch');
    expect(d.cfgRead(0, 2)).toBe(0x1af4);
    expect(d.cfgRead(2, 2)).toBe(0x1041);
    expect(d.cfgRead(8, 1)).toBe(1);
    expect(d.caps.map((c) => c.type).sort()).toEqual([1, 2, 3, 4]);
    expect(d.msixCap).toBeGreaterThan(0);
    expect(d.bar).toBe(a.device.transport.barAddress);
    const f = d.deviceFeatures();
    for (const bit of [32, NET_F.MAC, NET_F.STATUS, NET_F.MRG_RXBUF, NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.HOST_TSO4, NET_F.GUEST_TSO4, NET_F.CTRL_VQ]) {
      expect(hasFeature(f, bit)).toBe(true);
    }
    expect(hasFeature(f, NET_F.MQ)).toBe(false);
    const mac = [0, 1, 2, 3, 4, 5].map((i) => d.deviceCfg(i, 1).toString(16).padStart(2, '0')).join(':');
    expect(mac).toBe(GUEST_MAC);
    expect(d.deviceCfg(6, 2)).toBe(VIRTIO_NET_S_LINK_UP);
  });

  it('moves its BAR where the guest puts it, with the ioeventfds', () => {
    const old = d.bar;
    const moved = old + 0x100000;
    d.cfgWrite(4, 2, 0); // decoding off, as Linux does around BAR changes
    d.cfgWrite(0x10, 4, 0xffffffff);
    expect(d.cfgRead(0x10, 4) >>> 0).toBe((~(BAR_LAYOUT.size - 1)) >>> 0); // size probe
    d.cfgWrite(0x10, 4, moved);
    d.cfgWrite(4, 2, 0x6); // memory + bus master
    expect(a.device.transport.barAddress).toBe(moved);
    expect(vm.mmio.read(old, 4)).toBe(0xffffffff); // nothing there any more
    expect(d.common(COMMON_CFG.num_queues, 2)).toBe(3);
  });

  it('exchanges ARP and ping with the namespace kernel; MSI-X interrupts reach the LAPIC through irqfd', async () => {
    enableLapic(vm.vcpus[0].fd);
    negotiated = d.init({ queues: 3, msix: true });
    d.enableMsix([[0, 0x40], [1, 0x41], [2, 0x42], [3, 0x43]]);
    expect(hasFeature(negotiated, NET_F.GUEST_TSO4)).toBe(true);
    const tap = a.device.options.backend;
    expect(native.tapGetVnetHdrSz(tap.fds[0])).toBe(12);
    expect(tap.offloadFlags).toBe(0x0f); // CSUM | TSO4 | TSO6 | TSO_ECN, from the guest offloads

    // The notify addresses are real KVM ioeventfds: assigning the same one again is refused.
    const notifyAddr = a.device.transport.barAddress + BAR_LAYOUT.notify + TX * 4;
    expect(() => native.kvmIoeventfd(vm.vmFd, { addr: notifyAddr, len: 0, fd: a.device.transport.kickFd(TX), pio: false }))
      .toThrow(expect.objectContaining({ code: 'EEXIST' }));

    d.postRx(RX, 32);
    d.notifyEventfd(a.device.transport.kickFd(RX));
    d.postTx(TX, frames.arpRequest({ senderMac: GUEST_MAC, senderIp: '10.99.1.2', targetIp: '10.99.1.1' }));
    d.postTx(TX, ping(hostMac, 1, '10.99.1.2', 1));
    d.notifyEventfd(a.device.transport.kickFd(TX));

    const { frames: got, used } = await receive(d, RX, (fs) => fs.some((f) => f.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY), 'the echo reply');
    const arp = got.find((f) => f.arp?.op === frames.ARP.OP_REPLY);
    expect(arp?.arp).toMatchObject({ senderIp: '10.99.1.1', senderMac: hostMac, targetMac: GUEST_MAC });
    const echo = got.find((f) => f.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY)!;
    expect(echo.ipv4!.icmp).toMatchObject({ id: 0x77, seq: 1, checksumOk: true });
    expect(echo.ipv4!.icmp!.data.toString()).toBe('baton virtio 1');
    expect(used.every((e) => e.len > 12 && e.len <= 2048)).toBe(true);
    // TX completed: both chains are in the used ring.
    await waitFor(() => d.usedIdx(TX) === 2, 5000, 'tx used');
    // Interrupts: counted per vector, and the MSI (vector 0x41 = rx queue) is pending in the LAPIC.
    await waitFor(() => lapicIrrHas(vm.vcpus[0].fd, 0x41), 5000, 'MSI 0x41 in the LAPIC IRR');
    expect(a.device.transport.stats.vectorSignals[1]).toBeGreaterThan(0);
    expect(a.device.transport.stats.kicks).toBeGreaterThanOrEqual(2);
  });

  it('set_link off/on: config status and a config interrupt', async () => {
    const before = a.device.transport.stats.vectorSignals[0];
    const gen = d.common(COMMON_CFG.config_generation, 1);
    a.device.setLink(false);
    expect(d.deviceCfg(6, 2) & VIRTIO_NET_S_LINK_UP).toBe(0);
    expect(a.device.transport.stats.vectorSignals[0]).toBe(before + 1);
    expect(d.common(COMMON_CFG.config_generation, 1)).not.toBe(gen);
    await waitFor(() => lapicIrrHas(vm.vcpus[0].fd, 0x40), 5000, 'config MSI 0x40');
    a.device.setLink(true);
    expect(d.deviceCfg(6, 2) & VIRTIO_NET_S_LINK_UP).toBe(VIRTIO_NET_S_LINK_UP);
    expect(a.device.transport.stats.vectorSignals[0]).toBe(before + 2);
    // Traffic flows again.
    d.postTx(TX, ping(hostMac, 1, '10.99.1.2', 2));
    d.notifyMmio(TX); // this time through the MMIO notify path (no ioeventfd on the test's write)
    await receive(d, RX, (fs) => fs.some((f) => f.ipv4?.icmp?.seq === 2), 'echo reply 2');
  });

  it('falls back to INTx and the ISR when the driver does not enable MSI-X', async () => {
    d.cfgWrite(d.msixCap + 2, 2, 0); // MSI-X off
    // Without guest TSO a frame fits one 1600-byte buffer (with it, mergeable frames may need 64 KiB).
    d.init({ queues: 3, msix: false, want: (f) => ({ lo: f.lo & ~((1 << NET_F.GUEST_TSO4) | (1 << NET_F.GUEST_TSO6) | (1 << NET_F.GUEST_ECN)), hi: f.hi }) });
    d.postRx(RX, 8, 1600);
    d.notifyMmio(RX);
    const before = a.device.transport.stats.intxAssertions;
    d.postTx(TX, ping(hostMac, 1, '10.99.1.2', 3));
    d.notifyMmio(TX);
    await receive(d, RX, (fs) => fs.some((f) => f.ipv4?.icmp?.seq === 3), 'echo reply 3');
    expect(a.device.transport.stats.intxAssertions).toBeGreaterThan(before);
    expect(d.readIsr() & 1).toBe(1);
    expect(d.readIsr()).toBe(0); // reading acknowledged it
  });
});

describe('virtio-net multiqueue (queues=2)', () => {
  it('both TAP queues carry traffic after VQ_PAIRS_SET 2', async () => {
    const vm = newVm('vnetmq');
    const backend = net.openTap(2, 2, ',queues=2');
    backends.push(backend);
    expect(backend.fds).toHaveLength(2);
    const hostMac = net.hostMac(backend.ifname);
    const a = attach(vm, backend);
    a.device.setRunning(true);
    const d = new TestDriver(vm, a.slot);
    const f = d.init({ queues: 5, msix: true });
    d.enableMsix([[0, 0x50], [1, 0x51], [2, 0x52], [3, 0x53], [4, 0x54], [5, 0x55]]);
    expect(hasFeature(f, NET_F.MQ)).toBe(true);
    expect(d.deviceCfg(8, 2)).toBe(2);
    // Control queue: VQ_PAIRS_SET 2, acked OK.
    const CTRL = 4;
    const req = d.alloc(4, 16);
    vm.memory.write(req, Buffer.from([4, 0, 2, 0]));
    const ack = d.alloc(1, 16);
    vm.memory.write(ack, Buffer.from([0xee]));
    const q = d.queues[CTRL];
    const dv = (i: number, addr: number, len: number, flags: number, next: number) => {
      const v = vm.memory.view(q.desc + i * 16, 16);
      v.setBigUint64(0, BigInt(addr), true); v.setUint32(8, len, true); v.setUint16(12, flags, true); v.setUint16(14, next, true);
    };
    dv(0, req, 2, 1, 1); dv(1, req + 2, 2, 1, 2); dv(2, ack, 1, 2, 0);
    vm.memory.view(q.avail + 4, 2).setUint16(0, 0, true);
    vm.memory.view(q.avail + 2, 2).setUint16(0, 1, true);
    d.notifyMmio(CTRL);
    expect(vm.memory.read(ack, 1)[0]).toBe(0);
    expect(a.device.activePairs).toBe(2);

    for (const rxq of [0, 2]) { d.postRx(rxq, 64); d.notifyMmio(rxq); }
    // Many guest addresses, so the kernel's flow hash spreads the replies over both TAP queues.
    const guests = Array.from({ length: 24 }, (_, i) => `10.99.2.${10 + i}`);
    guests.forEach((g, i) => d.postTx(i % 2 ? 3 : 1, frames.arpRequest({ senderMac: GUEST_MAC, senderIp: g, targetIp: '10.99.2.1' })));
    d.notifyMmio(1); d.notifyMmio(3);
    await waitFor(() => d.usedIdx(1) + d.usedIdx(3) === guests.length, 5000, 'arp requests sent');
    guests.forEach((g, i) => d.postTx(i % 2 ? 3 : 1, ping(hostMac, 2, g, i, 0x100 + i)));
    d.notifyMmio(1); d.notifyMmio(3);
    const replies = new Set<number>();
    const perQueue = [0, 0];
    await waitFor(() => {
      for (const [k, rxq] of [[0, 0], [1, 2]]) {
        for (const e of d.takeUsed(rxq)) {
          const fr = frames.parseFrame(Buffer.from(d.rxFrame(e).frame));
          if (fr.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY) { replies.add(fr.ipv4.icmp.seq); perQueue[k]++; }
          d.postRx(rxq, 1);
        }
      }
      return replies.size === guests.length;
    }, 10_000, 'all echo replies');
    const stats = a.device.pairStats();
    expect(stats[0].txPackets).toBeGreaterThan(0);
    expect(stats[1].txPackets).toBeGreaterThan(0);
    expect(stats[0].rxPackets).toBeGreaterThan(0);
    expect(stats[1].rxPackets).toBeGreaterThan(0);
    expect(perQueue[0] + perQueue[1]).toBe(guests.length);
  });
});

describe('virtio-net save/restore into a second Vm mid-traffic', () => {
  it('continues from the saved ring state with the same TAP fds, losing no reply', async () => {
    const vm1 = newVm('vnets1');
    const backend1 = net.openTap(3, 3);
    const hostMac = net.hostMac(backend1.ifname);
    const a1 = attach(vm1, backend1);
    a1.device.setRunning(true);
    const d = new TestDriver(vm1, a1.slot);
    d.init({ queues: 3, msix: true });
    d.enableMsix([[0, 0x60], [1, 0x61], [2, 0x62], [3, 0x63]]);
    d.postRx(RX, 128);
    d.notifyMmio(RX);
    d.postTx(TX, frames.arpRequest({ senderMac: GUEST_MAC, senderIp: '10.99.3.2', targetIp: '10.99.3.1' }));
    d.notifyMmio(TX);
    await receive(d, RX, (fs) => fs.some((f) => f.arp?.op === frames.ARP.OP_REPLY), 'arp reply');

    // Mid-traffic: 20 pings out, then stop the NIC as a pause would, before every reply is in.
    const N = 20;
    for (let i = 0; i < N; i++) d.postTx(TX, ping(hostMac, 3, '10.99.3.2', 100 + i));
    d.notifyMmio(TX);
    a1.device.setRunning(false);
    const seqs = new Set<number>();
    for (const e of d.takeUsed(RX)) {
      const fr = frames.parseFrame(Buffer.from(d.rxFrame(e).frame));
      if (fr.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY) seqs.add(fr.ipv4.icmp.seq);
    }
    const state = JSON.parse(JSON.stringify(a1.device.save()));
    expect(state.transport.queues[TX].usedIdx).toBe(N + 1);

    // Destination: a new Vm over the same RAM fd, the TAP fds handed over (incoming-fds).
    const barBefore = a1.device.transport.barAddress;
    const vm2 = newVm('vnets2', native.dup(vm1.memFd));
    const backend2 = TapBackend.create(parseNetdevTap('id=hn3,incoming-fds=on'));
    backends.push(backend2);
    a1.detach();
    backend2.attachFds(backend1.releaseFds(), 'migration');
    const a2 = attach(vm2, backend2, 'net0', a1.slot);
    a2.device.restore(state);
    expect(a2.device.transport.barAddress).toBe(barBefore);
    expect(native.tapGetVnetHdrSz(backend2.fds[0])).toBe(12);
    expect(backend2.offloadFlags).toBe(backend1.offloadFlags);
    a2.device.setRunning(true);
    d.vm = vm2;
    await waitFor(() => {
      for (const e of d.takeUsed(RX)) {
        const fr = frames.parseFrame(Buffer.from(d.rxFrame(e).frame));
        if (fr.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY) seqs.add(fr.ipv4.icmp.seq);
        d.postRx(RX, 1);
      }
      return seqs.size === N;
    }, 10_000, `all ${N} replies across the restore (have ${seqs.size})`);
    // And new traffic through the restored device, kicked through its ioeventfd.
    d.postTx(TX, ping(hostMac, 3, '10.99.3.2', 999));
    d.notifyEventfd(a2.device.transport.kickFd(TX));
    await receive(d, RX, (fs) => fs.some((f) => f.ipv4?.icmp?.seq === 999), 'reply after restore');
    expect(a2.device.transport.stats.vectorSignals[1]).toBeGreaterThan(0);
  });
});

describe('virtio-net against a hostile driver', () => {
  it('survives thousands of random descriptor tables, indices and register writes', async () => {
    const vm = newVm('vnetfz');
    const backend = net.openTap(4, 4);
    backends.push(backend);
    const hostMac = net.hostMac(backend.ifname);
    const a = attach(vm, backend);
    a.device.setRunning(true);
    const d = new TestDriver(vm, a.slot);
    let seed = 0x12345678;
    const rnd = () => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) / 2 ** 32; };
    const ri = (n: number) => Math.floor(rnd() * n);
    const ram = vm.memory.totalSize;
    let needsReset = 0, ignored = 0;
    const CASES = 3000;
    const bar = a.device.transport.barAddress;
    for (let c = 0; c < CASES; c++) {
      if (c % 50 === 0 || d.status & STATUS_DEVICE_NEEDS_RESET) {
        // Random config-space writes may have moved the BAR or turned decoding off: re-probe as a driver would.
        d.cfgWrite(0x10, 4, bar);
        d.cfgWrite(4, 2, 0x6);
        d.init({ queues: 3, msix: c % 100 === 0, queueSize: 1 << (1 + ri(8)) });
      }
      const q = d.queues[ri(3)];
      // Hostile descriptors: addresses in RAM, at its edge, beyond it, near 2^64; wild lengths, flags, next.
      for (let i = 0; i < q.size; i++) {
        const v = vm.memory.view(q.desc + i * 16, 16);
        const kind = ri(6);
        const addr = kind === 0 ? BigInt(ri(ram)) : kind === 1 ? BigInt(ram - ri(64)) : kind === 2 ? 0xffff_ffff_ffff_f000n + BigInt(ri(4096))
          : kind === 3 ? BigInt(0xc000_0000 + ri(0x1000_0000)) : BigInt(0x2000000 + ri(0x100000));
        v.setBigUint64(0, addr, true);
        v.setUint32(8, ri(4) === 0 ? 0xffffffff - ri(100) : ri(3000), true);
        v.setUint16(12, ri(8), true);
        v.setUint16(14, ri(4) === 0 ? ri(65536) : ri(q.size), true);
      }
      for (let i = 0; i < q.size; i++) vm.memory.view(q.avail + 4 + i * 2, 2).setUint16(0, ri(4) ? ri(q.size) : ri(65536), true);
      vm.memory.view(q.avail + 2, 2).setUint16(0, ri(3) ? ri(q.size + 1) : ri(65536), true);
      if (ri(10) === 0) d.setCommon(ri(0x40), ([1, 2, 4] as const)[ri(3)], ri(2 ** 32)); // random common-config writes
      if (ri(20) === 0) vm.mmio.write(d.bar + BAR_LAYOUT.device + ri(0x1000), ([1, 2, 4] as const)[ri(3)], ri(256));
      if (ri(20) === 0) d.cfgWrite(ri(256), ([1, 2, 4] as const)[ri(3)], ri(2 ** 32));
      expect(() => d.notifyMmio(q.index)).not.toThrow();
      if (d.status & STATUS_DEVICE_NEEDS_RESET) needsReset++; else ignored++;
      if (c % 500 === 0) await new Promise((r) => setImmediate(r)); // let TAP watches fire in between
    }
    expect(needsReset + ignored).toBe(CASES);
    expect(needsReset).toBeGreaterThan(CASES / 10);
    expect(a.device.transport.stats.lastViolation).not.toBe('');
    // Still a working NIC after a reset (the guest may have moved the BAR: put it back).
    d.cfgWrite(0x10, 4, bar);
    d.cfgWrite(4, 2, 0x6);
    d.cfgWrite(d.msixCap + 2, 2, 0);
    d.init({ queues: 3, want: (f) => ({ lo: f.lo & ~((1 << NET_F.GUEST_TSO4) | (1 << NET_F.GUEST_TSO6) | (1 << NET_F.GUEST_ECN)), hi: f.hi }) });
    d.postRx(RX, 16);
    d.notifyMmio(RX);
    d.postTx(TX, frames.arpRequest({ senderMac: GUEST_MAC, senderIp: '10.99.4.2', targetIp: '10.99.4.1' }));
    d.postTx(TX, ping(hostMac, 4, '10.99.4.2', 7));
    d.notifyMmio(TX);
    await receive(d, RX, (fs) => fs.some((f) => f.ipv4?.icmp?.seq === 7), 'echo reply after the fuzz');
    console.log(`fuzz: ${CASES} cases, NEEDS_RESET ${needsReset}, ignored ${ignored}, violations ${a.device.transport.stats.violations}`);
  });
});

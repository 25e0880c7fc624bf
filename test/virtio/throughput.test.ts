// A quick rate check of the data path (not a benchmark: bench/ owns those). TX: the test
// driver queues 64-byte UDP frames to the namespace; RX: python in the namespace sends UDP
// datagrams to the guest's address. Prints frames/s; asserts only that everything arrived.
import { execFile } from 'node:child_process';
import { attachVirtioNet } from '../../src/hypervisor/devices/virtio/attach';
import { NET_F } from '../../src/hypervisor/devices/virtio/constants';
import type { Vm } from '../../src/hypervisor/vm';
import type { TapBackend } from '../../src/hypervisor/net/tap-backend';
import { TestDriver, waitFor } from './driver';
import { NetFixture, buildGuest, createVm, ip } from './harness';

const GUEST_MAC = '52:54:00:12:34:56';

function udpFrame(hostMac: string, len: number): Buffer {
  const f = Buffer.alloc(len);
  Buffer.from(hostMac.split(':').map((h) => parseInt(h, 16))).copy(f, 0);
  Buffer.from(GUEST_MAC.split(':').map((h) => parseInt(h, 16))).copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45; f.writeUInt16BE(len - 14, 16); f[22] = 64; f[23] = 17;
  Buffer.from([10, 99, 5, 2]).copy(f, 26); Buffer.from([10, 99, 5, 1]).copy(f, 30);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += f.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  f.writeUInt16BE(~sum & 0xffff, 24);
  f.writeUInt16BE(40000, 34); f.writeUInt16BE(9, 36); f.writeUInt16BE(len - 34, 38);
  return f;
}

describe('virtio-net rate (quick check)', () => {
  let net: NetFixture;
  let vm: Vm;
  let backend: TapBackend;
  let detach: (() => void) | undefined;

  beforeAll(() => { buildGuest(); net = new NetFixture(); });
  afterAll(() => { detach?.(); backend?.close(); vm?.destroy(); net?.cleanup(); });

  it('moves frames both ways and reports frames/s', async () => {
    vm = createVm(`vnetrate-${process.pid}`);
    backend = net.openTap(5, 5);
    const hostMac = net.hostMac(backend.ifname);
    // A long TAP queue: the test driver refills buffers only every few ms, the kernel should queue meanwhile.
    ip('-n', net.netns, 'link', 'set', 'dev', backend.ifname, 'txqueuelen', '100000');
    ip('-n', net.netns, 'neigh', 'add', '10.99.5.2', 'lladdr', GUEST_MAC, 'dev', backend.ifname);
    const a = attachVirtioNet(vm, { id: 'net0', backend });
    detach = a.detach;
    a.device.setRunning(true);
    const d = new TestDriver(vm, a.slot);
    d.init({ queues: 3, msix: true, want: (f) => ({ lo: f.lo & ~((1 << NET_F.GUEST_TSO4) | (1 << NET_F.GUEST_TSO6) | (1 << NET_F.GUEST_ECN)), hi: f.hi }) });

    // TX: 128 frames per round (two descriptors each), notify, wait for completion, recycle.
    const frame = udpFrame(hostMac, 64);
    const TX_FRAMES = 20_000;
    const txStart = process.hrtime.bigint();
    for (let sent = 0; sent < TX_FRAMES; sent += 128) {
      for (let i = 0; i < 128; i++) d.postTx(1, frame);
      d.notifyMmio(1);
      await waitFor(() => d.usedIdx(1) === ((sent + 128) & 0xffff), 10_000, 'tx completion');
      d.takeUsed(1);
      (d as unknown as { next: number }).next = 0x2000000 + 0x100000; // reuse buffer space (rings live below)
    }
    const txSecs = Number(process.hrtime.bigint() - txStart) / 1e9;
    const txRate = Math.round(a.device.pairStats()[0].txPackets / txSecs);

    // RX: the namespace sends datagrams as fast as python can; we keep 256 buffers posted.
    d.postRx(0, 256, 2048);
    d.notifyMmio(0);
    const RX_FRAMES = 20_000;
    const sender = new Promise<void>((resolve, reject) => execFile('ip', ['netns', 'exec', net.netns, 'python3', '-c',
      `import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_SNDBUF,1<<22)\nfor i in range(${RX_FRAMES}): s.sendto(b'x'*22,('10.99.5.2',9))`,
    ], (err) => (err ? reject(err) : resolve())));
    const rxStart = process.hrtime.bigint();
    let done = false;
    void sender.then(() => { done = true; });
    let last = -1;
    let quietSince = Date.now();
    await waitFor(() => {
      const used = d.takeUsed(0);
      if (used.length) {
        (d as unknown as { next: number }).next = 0x2000000 + 0x100000; // buffer contents are not checked here
        d.postRx(0, used.length, 2048);
        d.notifyMmio(0);
      }
      const n = a.device.pairStats()[0].rxPackets;
      if (n !== last) { last = n; quietSince = Date.now(); }
      return done && Date.now() - quietSince > 300;
    }, 60_000, 'the sender to finish');
    const rx = a.device.pairStats()[0].rxPackets;
    const rxSecs = (Number(process.hrtime.bigint() - rxStart) / 1e9) - 0.3;
    const rxRate = Math.round(rx / rxSecs);
    console.log(`virtio-net quick rate: tx ${txRate} frames/s (64 B, ${TX_FRAMES} frames); rx ${rxRate} frames/s (${rx} of ${RX_FRAMES} datagrams arrived, unpaced sender); ` +
      `interrupts per vector ${JSON.stringify(a.device.transport.stats.vectorSignals)}, rx wake-ups without buffers ${a.device.pairStats()[0].rxNoBuffers}`);
    expect(a.device.pairStats()[0].txPackets).toBe(Math.ceil(TX_FRAMES / 128) * 128);
    expect(rx).toBeGreaterThan(0);
    a.detach();
  });
});

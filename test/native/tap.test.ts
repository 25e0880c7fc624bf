// TAP wrappers against real TAPs living in a network namespace this test creates. The TAPs
// are opened by a child process inside the namespace (a TAP is created in the namespace of
// whoever opens /dev/net/tun) and reach this process over SCM_RIGHTS.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { TAP, TapOpenOptions, VNET_HDR_SIZE } from '../../src/native/io';
import * as frames from './fixtures/frames';
import {
  acceptOne,
  createNetns,
  deleteNetns,
  ip,
  killChildren,
  native,
  receiveUntilEof,
  spawnFixture,
  tempDir,
  thrownBy,
} from './fixtures/helpers';

/** The MAC our side of the TAP uses (a locally administered address). */
const GUEST_MAC = '02:00:00:99:00:02';

let netns = '';
let dir = '';
const openFds: number[] = [];

beforeAll(() => {
  netns = createNetns('tap');
  dir = tempDir('tap');
});

afterAll(() => {
  killChildren();
  for (const fd of openFds) {
    try {
      native.close(fd);
    } catch {
      // already closed by the test
    }
  }
  deleteNetns(netns);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Opens `queues` fds of TAP `ifname` inside the namespace (child process) and receives them. */
async function openTapInNetns(ifname: string, options: TapOpenOptions, queues = 1): Promise<{ ifname: string; fds: number[] }> {
  const socketPath = path.join(dir, `${ifname}.sock`);
  const listenFd = native.unixListen(socketPath, 1);
  try {
    const opener = spawnFixture('tap-opener.js', [socketPath, ifname, JSON.stringify(options), String(queues)], netns);
    // The opener exits right after sending: its connection and message wait in the kernel.
    const { code, stderr } = await opener.exited;
    if (code !== 0) throw new Error(`tap-opener failed (exit ${code}): ${stderr}`);
    const conn = await acceptOne(listenFd);
    const received = await receiveUntilEof(conn);
    native.close(conn);
    openFds.push(...received.fds);
    expect(received.fds).toHaveLength(queues);
    return { ifname: JSON.parse(received.data.toString()).ifname, fds: received.fds };
  } finally {
    native.close(listenFd);
    fs.rmSync(socketPath, { force: true });
  }
}

function bringUp(ifname: string, cidr: string): string {
  ip('-n', netns, 'addr', 'add', cidr, 'dev', ifname);
  ip('-n', netns, 'link', 'set', ifname, 'up');
  const [link] = JSON.parse(ip('-n', netns, '-j', 'link', 'show', ifname)) as { address: string }[];
  return link.address;
}

function sendUdpInNetns(dst: string, port: number, payload: string): void {
  execFileSync('ip', ['netns', 'exec', netns, 'socat', '-u', '-', `UDP-SENDTO:${dst}:${port}`], { input: payload });
}

const isArpReplyTo = (ip4: string) => (f: frames.ParsedFrame) =>
  f.arp !== null && f.arp.op === frames.ARP.OP_REPLY && f.arp.targetIp === ip4;

describe('TAP', () => {
  // Shared by the tests that follow the first one.
  let tap0 = { ifname: '', fd: -1, kernelMac: '' };

  it('carries frames both ways between the TAP fd and the namespace kernel', async () => {
    const { ifname, fds } = await openTapInNetns('bt-tap0', {});
    const fd = fds[0];
    expect(ifname).toBe('bt-tap0');
    expect(native.fdType(fd)).toBe('char');
    const iff = native.tapGetIff(fd);
    expect(iff.ifname).toBe('bt-tap0');
    expect(iff.flags & (TAP.IFF_TAP | TAP.IFF_NO_PI | TAP.IFF_VNET_HDR)).toBe(TAP.IFF_TAP | TAP.IFF_NO_PI);
    const features = native.tapGetFeatures(fd);
    for (const f of [TAP.IFF_TAP, TAP.IFF_NO_PI, TAP.IFF_VNET_HDR, TAP.IFF_MULTI_QUEUE]) expect(features & f).toBe(f);

    const kernelMac = bringUp(ifname, '10.99.1.1/24');
    tap0 = { ifname, fd, kernelMac };

    // kernel -> fd: a datagram to an unknown neighbour makes the kernel ask for its MAC.
    sendUdpInNetns('10.99.1.2', 7777, 'hello over tap');
    const whoHas = await frames.waitForFrame(native, fd, {
      match: (f) => f.arp !== null && f.arp.op === frames.ARP.OP_REQUEST && f.arp.targetIp === '10.99.1.2',
    });
    expect(whoHas.dstMac).toBe(frames.BROADCAST_MAC);
    expect(whoHas.arp).toMatchObject({ senderIp: '10.99.1.1', senderMac: kernelMac });

    // fd -> kernel: answering it releases the queued datagram, which comes back to us.
    const reply = frames.arpReply({ senderMac: GUEST_MAC, senderIp: '10.99.1.2', targetMac: kernelMac, targetIp: '10.99.1.1' });
    expect(frames.writeFrames(native, fd, [reply])).toBe(1);
    const udp = await frames.waitForFrame(native, fd, { match: (f) => f.ipv4?.udp?.dstPort === 7777 });
    expect(udp.dstMac).toBe(GUEST_MAC);
    expect(udp.ipv4).toMatchObject({ src: '10.99.1.1', dst: '10.99.1.2', headerChecksumOk: true });
    expect(udp.ipv4!.udp!.data.toString()).toBe('hello over tap');

    // Two packets in one writevBatch: an ARP request and a ping; both get answered.
    const ping = frames.icmpEchoRequest({
      srcMac: GUEST_MAC, dstMac: kernelMac, srcIp: '10.99.1.2', dstIp: '10.99.1.1', id: 0x4242, seq: 1, data: Buffer.from('baton ping'),
    });
    const whoIsKernel = frames.arpRequest({ senderMac: GUEST_MAC, senderIp: '10.99.1.2', targetIp: '10.99.1.1' });
    expect(frames.writeFrames(native, fd, [whoIsKernel, ping])).toBe(2);
    let arpAnswer: frames.ParsedArp | null = null;
    const echo = await frames.waitForFrame(native, fd, {
      match: (f) => {
        if (isArpReplyTo('10.99.1.2')(f)) arpAnswer = f.arp;
        return f.ipv4?.icmp?.type === frames.ICMP.ECHO_REPLY;
      },
    });
    expect(arpAnswer).toMatchObject({ senderIp: '10.99.1.1', senderMac: kernelMac, targetMac: GUEST_MAC });
    expect(echo.ipv4!.icmp).toMatchObject({ id: 0x4242, seq: 1, checksumOk: true });
    expect(echo.ipv4!.icmp!.data.toString()).toBe('baton ping');
  });

  it('TUNSETPERSIST and TUNSETSNDBUF take effect', () => {
    expect(tap0.fd).toBeGreaterThanOrEqual(0);
    native.tapSetPersist(tap0.fd, true);
    expect(native.tapGetIff(tap0.fd).flags & TAP.IFF_PERSIST).toBe(TAP.IFF_PERSIST);
    native.tapSetPersist(tap0.fd, false);
    expect(native.tapGetIff(tap0.fd).flags & TAP.IFF_PERSIST).toBe(0);
    native.tapSetSndbuf(tap0.fd, 1 << 20);
    const e = thrownBy(() => native.tapSetSndbuf(tap0.fd, 0));
    expect(e).toMatchObject({ name: 'TypeError', syscall: 'TUNSETSNDBUF' });
  });

  it('a TAP fd handed to another node process over SCM_RIGHTS works there', async () => {
    expect(tap0.fd).toBeGreaterThanOrEqual(0);
    const socketPath = path.join(dir, 'handover.sock');
    const listenFd = native.unixListen(socketPath, 1);
    openFds.push(listenFd);
    const user = spawnFixture('tap-user.js', [socketPath]);
    const conn = await acceptOne(listenFd);
    openFds.push(conn);
    expect(native.peerCred(conn)).toEqual({ pid: user.process.pid, uid: process.getuid!(), gid: process.getgid!() });

    const request = { senderMac: '02:00:00:99:00:03', senderIp: '10.99.1.3', targetIp: '10.99.1.1' };
    const data = Buffer.from(JSON.stringify(request));
    expect(native.sendmsgFds(conn, data, [tap0.fd])).toBe(data.length);
    const answer = await receiveUntilEof(conn);
    const { code, stderr } = await user.exited;
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const result = JSON.parse(answer.data.toString());
    expect(result.pid).toBe(user.process.pid);
    expect(result.tapFdType).toBe('char');
    expect(result.reply).toMatchObject({
      op: frames.ARP.OP_REPLY,
      senderIp: '10.99.1.1',
      senderMac: tap0.kernelMac,
      targetIp: '10.99.1.3',
      targetMac: '02:00:00:99:00:03',
    });
  });

  it('vnet header: size and offload round trip; frames carry the header in its own iov', async () => {
    const { ifname, fds } = await openTapInNetns('bt-tap1', { vnetHdr: true });
    const fd = fds[0];
    expect(native.tapGetIff(fd).flags & TAP.IFF_VNET_HDR).toBe(TAP.IFF_VNET_HDR);
    expect(native.tapGetVnetHdrSz(fd)).toBe(VNET_HDR_SIZE.legacy);
    native.tapSetVnetHdrSz(fd, VNET_HDR_SIZE.mergeable);
    expect(native.tapGetVnetHdrSz(fd)).toBe(VNET_HDR_SIZE.mergeable);
    native.tapSetOffload(fd, TAP.TUN_F_CSUM | TAP.TUN_F_TSO4 | TAP.TUN_F_TSO6 | TAP.TUN_F_TSO_ECN);

    let e = thrownBy(() => native.tapSetOffload(fd, 0x8000));
    expect(e).toMatchObject({ code: 'EINVAL', syscall: 'TUNSETOFFLOAD' });
    expect(e.message).toContain('TUNSETOFFLOAD failed: EINVAL');
    e = thrownBy(() => native.tapSetVnetHdrSz(fd, 4)); // smaller than struct virtio_net_hdr
    expect(e).toMatchObject({ code: 'EINVAL', syscall: 'TUNSETVNETHDRSZ' });
    native.tapSetOffload(fd, 0);

    const kernelMac = bringUp(ifname, '10.99.2.1/24');
    const hdr = VNET_HDR_SIZE.mergeable;
    const request = frames.arpRequest({ senderMac: GUEST_MAC, senderIp: '10.99.2.2', targetIp: '10.99.2.1' });
    expect(frames.writeFrames(native, fd, [request], hdr)).toBe(1);
    const reply = await frames.waitForFrame(native, fd, { vnetHdrSize: hdr, match: isArpReplyTo('10.99.2.2') });
    expect(reply.arp!.senderMac).toBe(kernelMac);
    expect(reply.length).toBe(hdr + 14 + frames.ARP.length);
    // virtio_net_hdr.flags = 0 and gso_type = VIRTIO_NET_HDR_GSO_NONE for a plain frame.
    expect(reply.vnetHdr[0]).toBe(0);
    expect(reply.vnetHdr[1]).toBe(0);
  });

  it('multiqueue TAP: two queues, detach and re-attach one', async () => {
    const { ifname, fds } = await openTapInNetns('bt-mq0', { multiQueue: true }, 2);
    const [q0, q1] = fds;
    for (const q of fds) {
      expect(native.tapGetIff(q)).toEqual({ ifname, flags: expect.any(Number) });
      expect(native.tapGetIff(q).flags & TAP.IFF_MULTI_QUEUE).toBe(TAP.IFF_MULTI_QUEUE);
    }
    const kernelMac = bringUp(ifname, '10.99.3.1/24');
    const ask = (senderIp: string) => frames.arpRequest({ senderMac: GUEST_MAC, senderIp, targetIp: '10.99.3.1' });

    // A detached queue still sends (the kernel keeps its link to the TAP) but receives
    // nothing: the reply to what q0 sent comes on q1.
    native.tapSetQueue(q0, false);
    expect(thrownBy(() => native.tapSetQueue(q0, false))).toMatchObject({ code: 'EINVAL', syscall: 'TUNSETQUEUE' });
    expect(frames.writeFrames(native, q0, [ask('10.99.3.2')])).toBe(1);
    const onQ1 = await frames.waitForFrame(native, [q0, q1], { match: isArpReplyTo('10.99.3.2') });
    expect(onQ1.fd).toBe(q1);
    expect(onQ1.arp!.senderMac).toBe(kernelMac);

    // Re-attached, q0 sends again; the reply comes on whichever queue the kernel picks.
    native.tapSetQueue(q0, true);
    expect(frames.writeFrames(native, q0, [ask('10.99.3.3')])).toBe(1);
    const reply = await frames.waitForFrame(native, [q0, q1], { match: isArpReplyTo('10.99.3.3') });
    expect([q0, q1]).toContain(reply.fd);
  });

  it('every wrapper error names its operation and errno', async () => {
    expect(native.tapConstants).toEqual(TAP);
    let e = thrownBy(() => native.tapOpen('bt-x', { tunPath: '/nonexistent/tun' }));
    expect(e).toMatchObject({ code: 'ENOENT', errno: 2, syscall: 'open(/nonexistent/tun)' });
    // /dev/null is a char device without TUN ioctls: TUNSETIFF fails and no TAP is made.
    e = thrownBy(() => native.tapOpen('bt-x', { tunPath: '/dev/null' }));
    expect(e).toMatchObject({ code: 'ENOTTY', syscall: 'TUNSETIFF' });
    // Argument errors are TypeErrors (from the addon's realm, hence matched by name).
    e = thrownBy(() => native.tapOpen('x'.repeat(TAP.IFNAMSIZ), {}));
    expect(e).toMatchObject({ name: 'TypeError', syscall: 'TUNSETIFF' });
    expect(thrownBy(() => native.tapOpen('bt-x', { vnetHdr: 'yes' } as never))).toMatchObject({ name: 'TypeError' });

    // A single-queue TAP has no queue to detach.
    expect(thrownBy(() => native.tapSetQueue(tap0.fd, false))).toMatchObject({ code: 'EINVAL', syscall: 'TUNSETQUEUE' });

    const [sock, peer] = native.unixSocketpair();
    const closed = native.dup(sock);
    native.close(closed);
    const wrappers: [string, (fd: number) => unknown][] = [
      ['TUNGETIFF', (fd) => native.tapGetIff(fd)],
      ['TUNGETFEATURES', (fd) => native.tapGetFeatures(fd)],
      ['TUNSETOFFLOAD', (fd) => native.tapSetOffload(fd, TAP.TUN_F_CSUM)],
      ['TUNSETVNETHDRSZ', (fd) => native.tapSetVnetHdrSz(fd, 12)],
      ['TUNGETVNETHDRSZ', (fd) => native.tapGetVnetHdrSz(fd)],
      ['TUNSETQUEUE', (fd) => native.tapSetQueue(fd, true)],
      ['TUNSETPERSIST', (fd) => native.tapSetPersist(fd, false)],
      ['TUNSETSNDBUF', (fd) => native.tapSetSndbuf(fd, 65536)],
    ];
    for (const [syscall, call] of wrappers) {
      expect(thrownBy(() => call(sock))).toMatchObject({ code: 'ENOTTY', syscall });
      expect(thrownBy(() => call(closed))).toMatchObject({ code: 'EBADF', syscall });
      expect(thrownBy(() => call(-1))).toMatchObject({ name: 'TypeError', syscall });
      expect(thrownBy(() => call(sock)).message).toMatch(new RegExp(`^${syscall} failed: ENOTTY`));
    }
    native.close(sock);
    native.close(peer);
  });
});

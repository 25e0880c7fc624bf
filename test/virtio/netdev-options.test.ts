// `-netdev tap` options: every conflict is an error naming the option; and the TAP backend's
// one fd-attach path against real fds (TAPs, a closed fd, /dev/null, an eventfd, a TUN-less socket).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../../src/native';
import { TAP } from '../../src/native/io';
import { NetdevOptionError, parseNetdevTap } from '../../src/hypervisor/net/netdev-options';
import { TapBackend } from '../../src/hypervisor/net/tap-backend';
import { ip } from './harness';

function errorOf(fn: () => unknown): NetdevOptionError {
  try {
    fn();
  } catch (err) {
    return err as NetdevOptionError;
  }
  throw new Error('expected an error');
}

const rejects = (text: string, option: string, message?: RegExp) => {
  const e = errorOf(() => parseNetdevTap(text));
  expect(e).toBeInstanceOf(NetdevOptionError);
  expect(e.details.option).toBe(option);
  expect(e.message).toContain(`${option}:`);
  if (message) expect(e.message).toMatch(message);
};

describe('parseNetdevTap', () => {
  it('parses QEMU-style strings and QMP objects', () => {
    const c = parseNetdevTap('tap,id=n0,ifname=tap9,queues=2,vnet_hdr=on,sndbuf=1M,script=no,downscript=no,vhost=off');
    expect(c).toMatchObject({ id: 'n0', ifname: 'tap9', queues: 2, vnetHdr: true, sndbuf: 1024 * 1024, vhost: false, script: 'no', downscript: 'no' });
    expect(parseNetdevTap({ type: 'tap', id: 'n1', fds: '5:6', vhost: false })).toMatchObject({ fds: ['5', '6'], queues: 2 });
    expect(parseNetdevTap('id=n2,fd=myfd')).toMatchObject({ fds: ['myfd'], queues: 1 });
    expect(parseNetdevTap('id=n3')).toMatchObject({ script: 'no', downscript: 'no', sndbuf: 0x7fffffff, incomingFds: false });
    expect(parseNetdevTap('id=n4,incoming-fds=on,queues=2,script=no,downscript=no')).toMatchObject({ incomingFds: true, queues: 2 });
    expect(parseNetdevTap('id=n5,vhost=off,vhostforce=on').vhost).toBe(false);
    expect(parseNetdevTap('id=n6,vhostforce=on').vhost).toBe(true); // QEMU 7.2: vhostforce implies vhost
    expect(parseNetdevTap('id=n7,poll-us=0').id).toBe('n7');
  });

  it('refuses every conflict, naming the option', () => {
    rejects('tap,ifname=x', 'id', /required/);
    rejects('tap,id=1bad', 'id');
    rejects('tap,id=n,bogus=1', 'bogus', /unknown option/);
    rejects('user,id=n', 'type');
    rejects('tap,id=n,id=m', 'id', /more than once/);
    rejects('tap,id=n,fd=3,ifname=t0', 'ifname', /invalid with fd=/);
    rejects('tap,id=n,fd=3,queues=2', 'queues', /invalid with fd=/);
    rejects('tap,id=n,fd=3,vnet_hdr=on', 'vnet_hdr', /invalid with fd=/);
    rejects('tap,id=n,fd=3,script=/bin/true', 'script', /invalid with fd=/);
    rejects('tap,id=n,fd=3,fds=4:5', 'fds', /invalid with fd=/);
    rejects('tap,id=n,fds=3:4,ifname=t0', 'ifname', /invalid with fds=/);
    rejects('tap,id=n,fds=3:4,queues=3', 'queues', /3 but fds= passes 2/);
    rejects('tap,id=n,fds=3:4,vhostfds=5', 'vhostfds', /must match/);
    rejects('tap,id=n,fds=3::4', 'fds', /empty entry/);
    rejects('tap,id=n,ifname=abcdefghijklmnop', 'ifname', /16 characters.*at most 15/);
    rejects('tap,id=n,ifname=a/b', 'ifname');
    rejects('tap,id=n,queues=0', 'queues');
    rejects('tap,id=n,queues=99', 'queues');
    rejects('tap,id=n,vnet_hdr=maybe', 'vnet_hdr', /not a boolean/);
    rejects('tap,id=n,sndbuf=lots', 'sndbuf');
    rejects('tap,id=n,sndbuf=0', 'sndbuf');
    rejects('tap,id=n,poll-us=50', 'poll-us', /busy polling/);
    rejects('tap,id=n,helper=/usr/lib/qemu/qemu-bridge-helper', 'helper', /not supported/);
    rejects('tap,id=n,vhost=off,vhostfd=7', 'vhostfd', /not valid without vhost/);
    rejects('tap,id=n,incoming-fds=on,fd=3', 'fd', /incoming-fds/);
    rejects('tap,id=n,incoming-fds=on,fds=3:4', 'fds', /incoming-fds/);
    rejects('tap,id=n,incoming-fds=on,ifname=t0', 'ifname', /incoming-fds/);
    rejects('tap,id=n,incoming-fds=on,sndbuf=1M', 'sndbuf', /incoming-fds/);
    rejects('tap,id=n,incoming-fds=on,vnet_hdr=on', 'vnet_hdr', /incoming-fds/);
    rejects('tap,id=n,incoming-fds=on,script=/etc/qemu-ifup', 'script', /must be "no"/);
    rejects('tap,id=n,incoming-fds=on,downscript=/etc/qemu-ifdown', 'downscript', /must be "no"/);
  });
});

describe('TapBackend', () => {
  const pid = process.pid % 10_000_000;
  const opened: TapBackend[] = [];
  const stray: number[] = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `bt-${process.pid}-tapopt-`));

  afterAll(() => {
    for (const b of opened) b.close();
    for (const fd of stray) { try { native.close(fd); } catch { /* closed */ } }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const create = (text: string, resolve?: (s: string) => number) => {
    const b = TapBackend.create(parseNetdevTap(text), resolve);
    opened.push(b);
    return b;
  };

  it('opens by name, applies sndbuf, runs script and downscript with the interface name', () => {
    const log = path.join(dir, 'script.log');
    const script = path.join(dir, 'ifup.sh');
    fs.writeFileSync(script, `#!/bin/sh\necho "$0 $1" >> ${log}\n`, { mode: 0o755 });
    const b = create(`tap,id=s0,ifname=bt${pid}s0,script=${script},downscript=${script}`);
    expect(b.ifname).toBe(`bt${pid}s0`);
    expect(b.vnetHdr).toBe(true);
    expect(fs.readFileSync(log, 'utf8')).toContain(`bt${pid}s0`);
    b.close();
    expect(fs.readFileSync(log, 'utf8').trim().split('\n')).toHaveLength(2);
    expect(() => ip('link', 'show', `bt${pid}s0`)).toThrow(); // a TAP we created goes with its fds
  });

  it('a failing script leaves nothing behind', () => {
    const e = errorOf(() => create(`tap,id=s1,ifname=bt${pid}s1,script=/bin/false`));
    expect(e.message).toMatch(/script: "\/bin\/false bt\d+s1" failed: exited with status 1/);
    expect(() => ip('link', 'show', `bt${pid}s1`)).toThrow();
  });

  it('attaches fds however they arrive: numbers, names through the resolver, and later (incoming-fds)', () => {
    const owner = create(`tap,id=o0,ifname=bt${pid}m0,queues=2`);
    const [fd0, fd1] = owner.fds.map((fd) => native.dup(fd));
    stray.push(fd0, fd1);
    const byNumber = create(`tap,id=f0,fds=${fd0}:${fd1}`);
    expect(byNumber.ifname).toBe(`bt${pid}m0`);
    expect(byNumber.fds).toEqual([fd0, fd1]);
    byNumber.releaseFds();
    const names: Record<string, number> = { q0: fd0, q1: fd1 };
    const byName = create('tap,id=f1,fds=q0:q1', (s) => { if (!(s in names)) throw new Error(`no fd named ${s}`); return names[s]; });
    expect(byName.fds).toEqual([fd0, fd1]);
    byName.releaseFds();
    expect(errorOf(() => create('tap,id=f2,fd=nosuch', (s) => { throw new Error(`no fd named ${s}`); })).message).toMatch(/fd: no fd named nosuch/);
    expect(errorOf(() => create('tap,id=f3,fd=q0')).message).toMatch(/is a name.*getfd/);
    const incoming = create('tap,id=f4,incoming-fds=on,queues=2');
    expect(incoming.waitingForFds).toBe(true);
    expect(errorOf(() => incoming.attachFds([fd0], 'migration')).message).toMatch(/1 fds for 2 queues/);
    incoming.attachFds([fd0, fd1], 'migration');
    expect(incoming.ifname).toBe(`bt${pid}m0`);
    incoming.releaseFds();
  });

  it('refuses closed, non-TAP and mismatched fds, naming the fd', () => {
    const closed = native.eventfdCreate(0);
    native.close(closed);
    expect(errorOf(() => create(`tap,id=b0,fd=${closed}`)).message).toMatch(new RegExp(`fd: fd ${closed} is not open`));
    const devNull = fs.openSync('/dev/null', 'r');
    stray.push(devNull);
    expect(errorOf(() => create(`tap,id=b1,fd=${devNull}`)).message).toMatch(new RegExp(`fd ${devNull} is not a TAP device`));
    const efd = native.eventfdCreate(0);
    stray.push(efd);
    expect(errorOf(() => create(`tap,id=b2,fd=${efd}`)).message).toMatch(new RegExp(`fd ${efd} is a (other|file), not a TAP`));
    const [s0, s1] = native.unixSocketpair();
    stray.push(s0, s1);
    expect(errorOf(() => create(`tap,id=b3,fd=${s0}`)).message).toMatch(/is a socket, not a TAP/);
    // Two fds of a single-queue TAP cannot be queues of one netdev.
    const single = native.tapOpen(`bt${pid}q1`, { vnetHdr: true });
    stray.push(single.fd);
    const dupSingle = native.dup(single.fd);
    stray.push(dupSingle);
    expect(errorOf(() => create(`tap,id=b4,fds=${single.fd}:${dupSingle}`)).message).toMatch(/not created with multi_queue/);
    // A TAP without IFF_VNET_HDR is fine (offloads off), unless vnet_hdr=on was asked for with ifname.
    const plain = native.tapOpen(`bt${pid}q2`, { vnetHdr: false });
    stray.push(plain.fd);
    const b = create(`tap,id=b5,fd=${plain.fd}`);
    expect(b.vnetHdr).toBe(false);
    b.releaseFds();
  });

  it('ifname on a multi_queue TAP with queues=1 fails with a clear hint; vhost names /dev/vhost-net', () => {
    const mq = native.tapOpen(`bt${pid}q3`, { vnetHdr: true, multiQueue: true });
    stray.push(mq.fd);
    expect(errorOf(() => create(`tap,id=c0,ifname=bt${pid}q3`)).message).toMatch(/multi_queue.*queues=N or pass its fd/);
    const e = errorOf(() => create(`tap,id=c1,ifname=bt${pid}q4,vhost=on`));
    expect(e.details.option).toBe('vhost');
    expect(e.message).toContain('/dev/vhost-net');
    expect(errorOf(() => create(`tap,id=c2,vhostforce=on`)).details.option).toBe('vhostforce');
    expect(() => ip('link', 'show', `bt${pid}q4`)).toThrow(); // refused before anything was created
    if (!fs.existsSync('/dev/vhost-net')) console.warn('/dev/vhost-net is absent here: vhost=on is refused (as tested); no vhost data path to test');
    const tun = native.tapGetFeatures(mq.fd) & TAP.IFF_MULTI_QUEUE;
    expect(tun).toBe(TAP.IFF_MULTI_QUEUE);
  });
});

// vhost-net wrappers. /dev/vhost-net exists only with CONFIG_VHOST_NET: where it is absent
// the device tests print why and return; the error paths run everywhere.
import { requireCapability } from '../../src/host/probe';
import { VHOST } from '../../src/native/io';
import { native, thrownBy } from './fixtures/helpers';

const VHOST_NET = '/dev/vhost-net';
// The host probe decides (the same answer `baton host validate` gives).
const missingReason = requireCapability('vhostNet');
const deviceExists = missingReason === undefined;

describe('vhost-net', () => {
  it('opening /dev/vhost-net works, or fails naming the operation and errno', () => {
    if (deviceExists) {
      const fd = native.vhostNetOpen();
      expect(native.fdType(fd)).toBe('char');
      native.close(fd);
      return;
    }
    console.warn(`vhost-net tests skipped: ${missingReason}`);
    const e = thrownBy(() => native.vhostNetOpen());
    expect(e).toMatchObject({ code: 'ENOENT', errno: 2, syscall: `open(${VHOST_NET})` });
    expect(e.message).toBe(`open(${VHOST_NET}) failed: ENOENT (No such file or directory)`);
  });

  it('owner, features and a ring set-up on the real device', () => {
    if (!deviceExists) {
      console.warn(`vhost-net device test skipped: ${missingReason}`);
      return;
    }
    const fd = native.vhostNetOpen();
    try {
      native.vhostSetOwner(fd);
      expect(thrownBy(() => native.vhostSetOwner(fd))).toMatchObject({ code: 'EBUSY', syscall: 'VHOST_SET_OWNER' });
      const features = native.vhostGetFeatures(fd);
      expect(features & (1n << BigInt(VHOST.VHOST_NET_F_VIRTIO_NET_HDR))).not.toBe(0n);
      native.vhostSetFeatures(fd, 0n);
      native.vhostSetMemTable(fd, []);
      native.vhostSetVringNum(fd, 0, 256);
      native.vhostSetVringBase(fd, 0, 7);
      expect(native.vhostGetVringBase(fd, 0)).toBe(7);
      const kick = native.eventfdCreate(0, { nonblock: true });
      native.vhostSetVringKick(fd, 0, kick);
      native.vhostSetVringCall(fd, 0, kick);
      native.vhostSetVringKick(fd, 0, VHOST.VHOST_FILE_UNBIND);
      native.vhostSetVringCall(fd, 0, VHOST.VHOST_FILE_UNBIND);
      native.close(kick);
      // An eventfd is not a TAP or packet socket.
      const notTap = native.eventfdCreate(0);
      expect(thrownBy(() => native.vhostNetSetBackend(fd, 0, notTap))).toMatchObject({ syscall: 'VHOST_NET_SET_BACKEND' });
      native.close(notTap);
    } finally {
      native.close(fd);
    }
  });

  it('every wrapper error names its operation and errno', () => {
    expect(native.vhostConstants).toEqual(VHOST);
    expect(thrownBy(() => native.vhostNetOpen('/nonexistent/vhost-net'))).toMatchObject({
      code: 'ENOENT',
      syscall: 'open(/nonexistent/vhost-net)',
    });
    // Any non-vhost fd answers the vhost ioctls with ENOTTY; a closed one with EBADF.
    const efd = native.eventfdCreate(0);
    const closed = native.dup(efd);
    native.close(closed);
    const ring = { descUserAddr: 0x1000n, availUserAddr: 0x2000n, usedUserAddr: 0x3000n };
    const wrappers: [string, (fd: number) => unknown][] = [
      ['VHOST_SET_OWNER', (fd) => native.vhostSetOwner(fd)],
      ['VHOST_GET_FEATURES', (fd) => native.vhostGetFeatures(fd)],
      ['VHOST_SET_FEATURES', (fd) => native.vhostSetFeatures(fd, 1n << 32n)],
      ['VHOST_SET_MEM_TABLE', (fd) => native.vhostSetMemTable(fd, [{ guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: 0x7f0000000000n }])],
      ['VHOST_SET_VRING_NUM', (fd) => native.vhostSetVringNum(fd, 0, 256)],
      ['VHOST_SET_VRING_BASE', (fd) => native.vhostSetVringBase(fd, 0, 0)],
      ['VHOST_GET_VRING_BASE', (fd) => native.vhostGetVringBase(fd, 0)],
      ['VHOST_SET_VRING_ADDR', (fd) => native.vhostSetVringAddr(fd, 0, ring)],
      ['VHOST_SET_VRING_KICK', (fd) => native.vhostSetVringKick(fd, 0, efd)],
      ['VHOST_SET_VRING_CALL', (fd) => native.vhostSetVringCall(fd, 0, efd)],
      ['VHOST_NET_SET_BACKEND', (fd) => native.vhostNetSetBackend(fd, 0, -1)],
    ];
    for (const [syscall, call] of wrappers) {
      const e = thrownBy(() => call(efd));
      expect(e).toMatchObject({ code: 'ENOTTY', errno: 25, syscall });
      expect(e.message).toBe(`${syscall} failed: ENOTTY (Inappropriate ioctl for device)`);
      expect(thrownBy(() => call(closed))).toMatchObject({ code: 'EBADF', syscall });
      expect(thrownBy(() => call(-1))).toMatchObject({ name: 'TypeError', syscall });
    }
    // Argument errors name the operation and the field.
    const badRegion = thrownBy(() => native.vhostSetMemTable(efd, [{ guestPhysAddr: -1, memorySize: 1, userspaceAddr: 1 }]));
    expect(badRegion).toMatchObject({ name: 'TypeError', syscall: 'VHOST_SET_MEM_TABLE' });
    expect(badRegion.message).toMatch(/regions\[0\]\.guestPhysAddr/);
    expect(thrownBy(() => native.vhostSetMemTable(efd, [null as never]))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.vhostSetMemTable(efd, new Array(600).fill({})))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.vhostSetVringAddr(efd, 0, { descUserAddr: 1n } as never)).message).toMatch(/availUserAddr/);
    expect(thrownBy(() => native.vhostSetVringAddr(efd, 0, { ...ring, flags: 2 ** 33 }))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.vhostSetFeatures(efd, 1n << 64n))).toMatchObject({ name: 'TypeError', syscall: 'VHOST_SET_FEATURES' });
    expect(thrownBy(() => native.vhostSetVringKick(efd, 0, -2))).toMatchObject({ name: 'TypeError', syscall: 'VHOST_SET_VRING_KICK' });
    expect(thrownBy(() => native.vhostNetOpen(42 as never))).toMatchObject({ name: 'TypeError' });
    native.close(efd);
  });
});

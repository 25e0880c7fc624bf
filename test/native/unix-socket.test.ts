// UNIX stream sockets carrying fds (SCM_RIGHTS), on real sockets and a real second process.
import * as fs from 'fs';
import * as path from 'path';
import { MAX_FDS_PER_MESSAGE } from '../../src/native/io';
import {
  O_CLOEXEC,
  O_NONBLOCK,
  acceptOne,
  fdFlags,
  killChildren,
  native,
  openFdCount,
  receiveUntilEof,
  spawnFixture,
  tempDir,
  thrownBy,
} from './fixtures/helpers';

let dir = '';

beforeAll(() => {
  dir = tempDir('unix');
});

afterAll(() => {
  killChildren();
  fs.rmSync(dir, { recursive: true, force: true });
});

function closeAll(fds: number[]): void {
  for (const fd of fds) native.close(fd);
}

describe('UNIX sockets with fds', () => {
  it('sendmsgFds / recvmsgFds pass fds that refer to the same objects, close-on-exec', () => {
    const [a, b] = native.unixSocketpair();
    expect(fdFlags(a) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
    const e1 = native.eventfdCreate(0, { nonblock: true });
    const e2 = native.eventfdCreate(0, { nonblock: true });
    expect(native.sendmsgFds(a, Buffer.from('two fds'), [e1, e2])).toBe(7);
    const msg = native.recvmsgFds(b, 100, 4)!;
    expect(msg.data.toString()).toBe('two fds');
    expect(msg.fds).toHaveLength(2);
    for (const fd of msg.fds) {
      expect([e1, e2]).not.toContain(fd);
      expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC); // MSG_CMSG_CLOEXEC
    }
    native.eventfdWrite(e1, 11n);
    native.eventfdWrite(e2, 22n);
    expect(native.eventfdRead(msg.fds[0])).toBe(11n);
    expect(native.eventfdRead(msg.fds[1])).toBe(22n);
    // Plain data, no fds; then EAGAIN is null and EOF is empty data.
    expect(native.sendmsgFds(a, new Uint8Array([1, 2, 3]), [])).toBe(3);
    expect(native.recvmsgFds(b, 100, 4)).toEqual({ data: Buffer.from([1, 2, 3]), fds: [] });
    expect(native.recvmsgFds(b, 100, 4)).toBeNull();
    native.close(a);
    expect(native.recvmsgFds(b, 100, 4)).toEqual({ data: Buffer.alloc(0), fds: [] });
    closeAll([b, e1, e2, ...msg.fds]);
  });

  it(`carries up to ${MAX_FDS_PER_MESSAGE} fds in one message and refuses more`, () => {
    expect(native.maxFdsPerMessage).toBe(MAX_FDS_PER_MESSAGE);
    const [a, b] = native.unixSocketpair();
    const efd = native.eventfdCreate(0, { nonblock: true });
    const before = openFdCount();
    const many = new Array<number>(MAX_FDS_PER_MESSAGE).fill(efd);
    expect(native.sendmsgFds(a, Buffer.from('x'), many)).toBe(1);
    const msg = native.recvmsgFds(b, 10, MAX_FDS_PER_MESSAGE)!;
    expect(msg.fds).toHaveLength(MAX_FDS_PER_MESSAGE);
    expect(new Set(msg.fds).size).toBe(MAX_FDS_PER_MESSAGE);
    closeAll(msg.fds);
    expect(openFdCount()).toBe(before);
    const e = thrownBy(() => native.sendmsgFds(a, Buffer.from('x'), [...many, efd]));
    expect(e).toMatchObject({ name: 'TypeError', syscall: 'sendmsg' });
    expect(e.message).toMatch(/at most 253 fds/);
    expect(thrownBy(() => native.recvmsgFds(b, 10, MAX_FDS_PER_MESSAGE + 1))).toMatchObject({ name: 'TypeError', syscall: 'recvmsg' });
    closeAll([a, b, efd]);
  });

  it('MSG_CTRUNC (more fds than maxFds) is an error, and the fds that arrived are closed', () => {
    const [a, b] = native.unixSocketpair();
    const efd = native.eventfdCreate(0);
    expect(native.sendmsgFds(a, Buffer.from('three'), [efd, efd, efd])).toBe(5);
    const before = openFdCount();
    const e = thrownBy(() => native.recvmsgFds(b, 100, 1));
    expect(e).toMatchObject({ code: 'EMSGSIZE', errno: 90, syscall: 'recvmsg' });
    expect(e.message).toMatch(/MSG_CTRUNC/);
    expect(e.message).toMatch(/maxFds=1/);
    expect(openFdCount()).toBe(before);
    // maxFds 0 with fds arriving is the same truncation.
    native.sendmsgFds(a, Buffer.from('one'), [efd]);
    expect(thrownBy(() => native.recvmsgFds(b, 100, 0))).toMatchObject({ code: 'EMSGSIZE' });
    expect(openFdCount()).toBe(before);
    closeAll([a, b, efd]);
  });

  it('sendmsgFds reports a full socket as -1', () => {
    const [a, b] = native.unixSocketpair();
    const chunk = Buffer.alloc(65536);
    let sent = 0;
    let result = 0;
    for (let i = 0; i < 10000 && result !== -1; i++) {
      result = native.sendmsgFds(a, chunk, []);
      if (result > 0) sent += result;
    }
    expect(result).toBe(-1);
    expect(sent).toBeGreaterThan(0);
    closeAll([a, b]);
  });

  it('listen / connect / accept on a path; peerCred of a real second process', async () => {
    const socketPath = path.join(dir, 'peer.sock');
    const listenFd = native.unixListen(socketPath, 4);
    expect(native.unixAccept(listenFd)).toBe(-1); // nobody yet
    expect(fs.statSync(socketPath).isSocket()).toBe(true);

    // In-process: both ends report this process.
    const local = native.unixConnect(socketPath);
    const localPeer = await acceptOne(listenFd);
    expect(native.peerCred(localPeer)).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    expect(native.peerCred(local).pid).toBe(process.pid);
    closeAll([local, localPeer]);

    // Another process: its pid, and eventfds we send it are the ones it writes to.
    const peer = spawnFixture('unix-peer.js', [socketPath]);
    const conn = await acceptOne(listenFd);
    expect(native.peerCred(conn).pid).toBe(peer.process.pid);
    const efd = native.eventfdCreate(0, { nonblock: true });
    expect(native.sendmsgFds(conn, Buffer.from('fds'), [efd, efd])).toBe(3);
    await receiveUntilEof(conn); // the peer closes when done
    const { code, stderr } = await peer.exited;
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    expect(native.eventfdRead(efd)).toBe(2n);
    closeAll([conn, efd, listenFd]);
    fs.rmSync(socketPath);
  });

  it('abstract socket names work', () => {
    const name = `\0bt-${process.pid}-abstract`;
    const listenFd = native.unixListen(name, 1);
    const c = native.unixConnect(name);
    const s = native.unixAccept(listenFd);
    expect(s).toBeGreaterThanOrEqual(0);
    closeAll([c, s, listenFd]);
  });

  it('every wrapper error names its operation and errno', () => {
    const missing = path.join(dir, 'nobody.sock');
    expect(thrownBy(() => native.unixConnect(missing))).toMatchObject({ code: 'ENOENT', syscall: 'connect' });
    const taken = path.join(dir, 'taken.sock');
    const listenFd = native.unixListen(taken, 1);
    expect(thrownBy(() => native.unixListen(taken, 1))).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind' });
    expect(thrownBy(() => native.unixListen(path.join(dir, 'no-dir', 'x.sock'), 1))).toMatchObject({ code: 'ENOENT', syscall: 'bind' });
    const tooLong = thrownBy(() => native.unixConnect('/tmp/' + 'x'.repeat(200)));
    expect(tooLong).toMatchObject({ name: 'TypeError', syscall: 'connect' });
    expect(tooLong.message).toMatch(/path must be 1..107 bytes/);
    expect(thrownBy(() => native.unixListen('', 1))).toMatchObject({ name: 'TypeError', syscall: 'bind' });
    expect(thrownBy(() => native.unixListen(path.join(dir, 'b.sock'), -1))).toMatchObject({ name: 'TypeError', syscall: 'listen' });

    const efd = native.eventfdCreate(0);
    const [a, b] = native.unixSocketpair();
    expect(thrownBy(() => native.unixAccept(efd))).toMatchObject({ code: 'ENOTSOCK', syscall: 'accept4' });
    expect(thrownBy(() => native.unixAccept(a))).toMatchObject({ code: 'EINVAL', syscall: 'accept4' }); // not listening
    expect(thrownBy(() => native.sendmsgFds(efd, Buffer.from('x'), []))).toMatchObject({ code: 'ENOTSOCK', syscall: 'sendmsg' });
    expect(thrownBy(() => native.recvmsgFds(efd, 10, 1))).toMatchObject({ code: 'ENOTSOCK', syscall: 'recvmsg' });
    expect(thrownBy(() => native.peerCred(efd))).toMatchObject({ code: 'ENOTSOCK', syscall: 'getsockopt(SO_PEERCRED)' });
    // Sending a closed fd: the kernel refuses the whole message.
    const closed = native.dup(efd);
    native.close(closed);
    expect(thrownBy(() => native.sendmsgFds(a, Buffer.from('x'), [closed]))).toMatchObject({ code: 'EBADF', syscall: 'sendmsg' });
    expect(native.recvmsgFds(b, 10, 1)).toBeNull();
    // Argument errors.
    expect(thrownBy(() => native.sendmsgFds(a, Buffer.alloc(0), [efd])).message).toMatch(/at least one byte/);
    expect(thrownBy(() => native.sendmsgFds(a, Buffer.from('x'), [efd, -3]))).toMatchObject({ name: 'TypeError', syscall: 'sendmsg' });
    expect(thrownBy(() => native.sendmsgFds(a, Buffer.from('x'), 'fds' as never))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.sendmsgFds(a, 'text' as never, []))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.recvmsgFds(b, 0, 1))).toMatchObject({ name: 'TypeError', syscall: 'recvmsg' });
    // Closed peer: EPIPE, no SIGPIPE (MSG_NOSIGNAL).
    native.close(b);
    expect(thrownBy(() => native.sendmsgFds(a, Buffer.from('x'), []))).toMatchObject({ code: 'EPIPE', syscall: 'sendmsg' });
    closeAll([a, efd, listenFd]);
    expect(thrownBy(() => native.peerCred(a))).toMatchObject({ code: 'EBADF' });
  });
});

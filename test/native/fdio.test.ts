// fds, eventfd, fdWatch (libuv poll) and batched readv/writev, on real kernel objects.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { FdWatch } from '../../src/native/io';
import { O_CLOEXEC, O_NONBLOCK, fdFlags, native, openFdCount, tempDir, thrownBy } from './fixtures/helpers';

let dir = '';
const openFds = new Set<number>();

/** Registers an fd for closing in afterAll (tests close most of them themselves). */
function track(fd: number): number {
  openFds.add(fd);
  return fd;
}
function closeTracked(fd: number): void {
  openFds.delete(fd);
  native.close(fd);
}

beforeAll(() => {
  dir = tempDir('fdio');
});

afterAll(() => {
  for (const fd of openFds) {
    try {
      native.close(fd);
    } catch {
      // closed by the test
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Resolves with the arguments of the next `count` callbacks of a new watch. */
function collectCallbacks(fd: number, events: 'r' | 'w' | 'rw', count: number, onEach?: (w: FdWatch) => void) {
  const calls: [boolean, boolean][] = [];
  let watch!: FdWatch;
  const done = new Promise<[boolean, boolean][]>((resolve) => {
    watch = native.fdWatch(fd, events, (readable, writable) => {
      calls.push([readable, writable]);
      onEach?.(watch);
      if (calls.length === count) {
        watch.stop();
        resolve(calls);
      }
    });
  });
  return { watch, done };
}

describe('eventfd and fdWatch', () => {
  it('eventfd write -> fdWatch callback on the JS thread -> read', async () => {
    const efd = track(native.eventfdCreate(0, { nonblock: true }));
    expect(native.eventfdRead(efd)).toBeNull(); // EAGAIN
    const { watch, done } = collectCallbacks(efd, 'r', 1);
    expect(watch.active).toBe(true);
    expect(watch.fd).toBe(efd);
    native.eventfdWrite(efd, 3n);
    native.eventfdWrite(efd, 4); // numbers are accepted too
    expect(await done).toEqual([[true, false]]);
    expect(watch.active).toBe(false);
    expect(native.eventfdRead(efd)).toBe(7n);
    expect(native.eventfdRead(efd)).toBeNull();
    closeTracked(efd);
  });

  it('semaphore eventfd reads 1 at a time; initval is honoured', () => {
    const efd = track(native.eventfdCreate(2, { nonblock: true, semaphore: true }));
    expect(native.eventfdRead(efd)).toBe(1n);
    expect(native.eventfdRead(efd)).toBe(1n);
    expect(native.eventfdRead(efd)).toBeNull();
    expect(fdFlags(efd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
    closeTracked(efd);
  });

  it('stop() inside the callback is safe and idempotent; no callback after stop', async () => {
    const efd = track(native.eventfdCreate(0, { nonblock: true }));
    let calls = 0;
    await new Promise<void>((resolve) => {
      const watch = native.fdWatch(efd, 'r', () => {
        calls++;
        watch.stop();
        watch.stop();
        // Not drained on purpose: a live watch would fire again at once.
        setTimeout(resolve, 50);
      });
      native.eventfdWrite(efd, 1n);
    });
    expect(calls).toBe(1);
    closeTracked(efd);
  });

  it('update() switches events; update after stop throws', async () => {
    const efd = track(native.eventfdCreate(0, { nonblock: true }));
    const { watch, done } = collectCallbacks(efd, 'r', 1);
    watch.update('w'); // an eventfd is writable while its counter is below the maximum
    expect(await done).toEqual([[false, true]]);
    expect(thrownBy(() => watch.update('r')).message).toMatch(/stopped/);
    expect(thrownBy(() => watch.update('x' as never))).toMatchObject({ name: 'TypeError', syscall: 'FdWatch.update' });
    closeTracked(efd);
  });

  it('a throwing callback is an uncaught exception, like any Node I/O callback', () => {
    // In a separate node process: jest would take the exception as this test's failure.
    const addon = path.resolve(__dirname, '../../native/build/Release/baton_native.node');
    const script = `
      const n = require(${JSON.stringify(addon)});
      const efd = n.eventfdCreate(1, { nonblock: true });
      process.on('exit', (code) => console.log('exit', code));
      const w = n.fdWatch(efd, 'r', () => { w.stop(); throw new Error('boom from callback'); });`;
    const result = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('boom from callback');
    expect(result.stdout).toBe('exit 1\n');
  });

  it('close(fd) stops the watch on that fd', () => {
    const efd = native.eventfdCreate(0, { nonblock: true });
    const watch = native.fdWatch(efd, 'r', () => undefined);
    native.close(efd);
    expect(watch.active).toBe(false);
    watch.stop();
  });

  it('an fd closed behind its watch (fs.closeSync) does not crash the process', async () => {
    const efd = native.eventfdCreate(1, { nonblock: true });
    let calls = 0;
    const watch = native.fdWatch(efd, 'r', () => calls++);
    fs.closeSync(efd); // before the loop registers the watch with epoll
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The watch still holds the eventfd open through its dup, so it may fire: fine. What
    // matters is that the process is alive and stop() cleans up.
    expect(calls).toBeGreaterThanOrEqual(0);
    watch.stop();
    expect(watch.active).toBe(false);
  });

  it('two watches on one fd both fire', async () => {
    const efd = track(native.eventfdCreate(0, { nonblock: true }));
    const a = collectCallbacks(efd, 'r', 1);
    const b = collectCallbacks(efd, 'r', 1);
    native.eventfdWrite(efd, 1n);
    expect(await Promise.all([a.done, b.done])).toEqual([[[true, false]], [[true, false]]]);
    closeTracked(efd);
  });

  it('fdWatch errors: closed fd, regular file, bad arguments', () => {
    const efd = track(native.eventfdCreate(0, { nonblock: true }));
    const closed = native.dup(efd);
    native.close(closed);
    expect(thrownBy(() => native.fdWatch(closed, 'r', () => undefined))).toMatchObject({ code: 'EBADF', syscall: 'fdWatch' });
    const file = path.join(dir, 'regular');
    fs.writeFileSync(file, 'x');
    const fileFd = track(fs.openSync(file, 'r'));
    // epoll refuses regular files
    expect(thrownBy(() => native.fdWatch(fileFd, 'r', () => undefined))).toMatchObject({ code: 'EPERM', syscall: 'uv_poll_init' });
    const first = native.fdWatch(efd, 'r', () => undefined);
    expect(thrownBy(() => native.fdWatch(efd, 'x' as never, () => undefined))).toMatchObject({ name: 'TypeError', syscall: 'fdWatch' });
    expect(thrownBy(() => native.fdWatch(efd, 'r', null as never))).toMatchObject({ name: 'TypeError', syscall: 'fdWatch' });
    expect(thrownBy(() => native.fdWatch(1.5, 'r', () => undefined))).toMatchObject({ name: 'TypeError', syscall: 'fdWatch' });
    const stop = first.stop;
    expect(() => stop.call(undefined)).toThrow(); // detached method: an error, not a crash
    first.stop();
    fs.closeSync(fileFd);
    openFds.delete(fileFd);
    closeTracked(efd);
  });

  it('eventfd errors name their operation', () => {
    const [sock, peer] = native.unixSocketpair();
    expect(thrownBy(() => native.eventfdRead(9999))).toMatchObject({ code: 'EBADF', syscall: 'eventfd read' });
    expect(thrownBy(() => native.eventfdWrite(9999, 1n))).toMatchObject({ code: 'EBADF', syscall: 'eventfd write' });
    const efd = native.eventfdCreate(0, { nonblock: true });
    // 2^64-1 is not a valid increment
    expect(thrownBy(() => native.eventfdWrite(efd, 0xffffffffffffffffn))).toMatchObject({ code: 'EINVAL', syscall: 'eventfd write' });
    expect(thrownBy(() => native.eventfdWrite(efd, -1))).toMatchObject({ name: 'TypeError', syscall: 'eventfd write' });
    expect(thrownBy(() => native.eventfdWrite(efd, 1n << 64n))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.eventfdCreate(-1))).toMatchObject({ name: 'TypeError', syscall: 'eventfd' });
    // Reading 8 bytes from a stream socket that has 3: a short read is reported, not returned.
    native.write(peer, Buffer.from('abc'), 0, 3);
    expect(thrownBy(() => native.eventfdRead(sock))).toMatchObject({ code: 'EINVAL', syscall: 'eventfd read' });
    for (const fd of [sock, peer, efd]) native.close(fd);
  });
});

describe('plain fd operations', () => {
  it('dup is close-on-exec; setNonBlocking / setCloexec flip the flags', () => {
    const efd = track(native.eventfdCreate(0));
    expect(fdFlags(efd) & O_NONBLOCK).toBe(0);
    native.setNonBlocking(efd, true);
    expect(fdFlags(efd) & O_NONBLOCK).toBe(O_NONBLOCK);
    native.setNonBlocking(efd, false);
    expect(fdFlags(efd) & O_NONBLOCK).toBe(0);
    native.setCloexec(efd, false);
    expect(fdFlags(efd) & O_CLOEXEC).toBe(0);
    const copy = track(native.dup(efd));
    expect(copy).not.toBe(efd);
    expect(fdFlags(copy) & O_CLOEXEC).toBe(O_CLOEXEC);
    native.setCloexec(efd, true);
    expect(fdFlags(efd) & O_CLOEXEC).toBe(O_CLOEXEC);
    // Same eventfd behind both numbers.
    native.eventfdWrite(copy, 5n);
    native.setNonBlocking(efd, true);
    expect(native.eventfdRead(efd)).toBe(5n);
    closeTracked(copy);
    closeTracked(efd);
    expect(thrownBy(() => native.close(efd))).toMatchObject({ code: 'EBADF', syscall: 'close' });
    expect(thrownBy(() => native.dup(efd))).toMatchObject({ code: 'EBADF', syscall: 'dup' });
    expect(thrownBy(() => native.setNonBlocking(efd, true))).toMatchObject({ code: 'EBADF', syscall: 'fcntl(O_NONBLOCK)' });
    expect(thrownBy(() => native.setCloexec(efd, true))).toMatchObject({ code: 'EBADF', syscall: 'fcntl(FD_CLOEXEC)' });
  });

  it('fdType tells char devices, sockets, files, fifos and the rest apart', () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const fds = {
      char: fs.openSync('/dev/null', 'r'),
      socket: native.unixSocketpair(),
      file: fs.openSync(path.join(dir, 'file'), 'w'),
      fifo: fs.openSync(fifo, 'r+'), // O_RDWR does not wait for a peer
      other: native.eventfdCreate(0), // anonymous inode
    };
    expect(native.fdType(fds.char)).toBe('char');
    expect(native.fdType(fds.socket[0])).toBe('socket');
    expect(native.fdType(fds.file)).toBe('file');
    expect(native.fdType(fds.fifo)).toBe('fifo');
    expect(native.fdType(fds.other)).toBe('other');
    for (const fd of [fds.char, fds.file, fds.fifo]) fs.closeSync(fd);
    for (const fd of [...fds.socket, fds.other]) native.close(fd);
    expect(thrownBy(() => native.fdType(fds.other))).toMatchObject({ code: 'EBADF', syscall: 'fstat' });
  });

  it('read/write move bytes at an offset and report EAGAIN as -1', () => {
    const [a, b] = native.unixSocketpair();
    const out = Buffer.from('..hello..');
    expect(native.write(a, out, 2, 5)).toBe(5);
    const inBuf = new Uint8Array(16);
    expect(native.read(b, inBuf, 4, 12)).toBe(5);
    expect(Buffer.from(inBuf.subarray(4, 9)).toString()).toBe('hello');
    expect(native.read(b, inBuf, 0, 16)).toBe(-1);
    // An ArrayBuffer and a view with a byteOffset work too.
    const ab = new ArrayBuffer(8);
    new Uint8Array(ab).set([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(native.write(a, new Uint8Array(ab, 4, 4), 1, 3)).toBe(3);
    expect(native.read(b, ab, 0, 8)).toBe(3);
    expect(Array.from(new Uint8Array(ab, 0, 3))).toEqual([6, 7, 8]);
    // Bounds: a RangeError naming the operation, before any I/O.
    expect(thrownBy(() => native.read(b, inBuf, 10, 7))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    expect(thrownBy(() => native.write(a, inBuf, 17, 0)).message).toMatch(/^write: offset 17/);
    expect(thrownBy(() => native.read(b, 'text' as never, 0, 1))).toMatchObject({ name: 'TypeError', syscall: 'read' });
    expect(thrownBy(() => native.write(a, inBuf, -1, 1))).toMatchObject({ name: 'TypeError', syscall: 'write' });
    // EOF reads 0.
    native.close(a);
    expect(native.read(b, inBuf, 0, 16)).toBe(0);
    native.close(b);
    expect(thrownBy(() => native.read(b, inBuf, 0, 1))).toMatchObject({ code: 'EBADF', syscall: 'read' });
    expect(thrownBy(() => native.write(b, inBuf, 0, 1))).toMatchObject({ code: 'EBADF', syscall: 'write' });
  });
});

describe('readvBatch / writevBatch', () => {
  it('scatter/gather straight into and out of one ArrayBuffer, several iovs per packet', () => {
    const [a, b] = native.unixSocketpair();
    const ram = new ArrayBuffer(4096);
    const bytes = new Uint8Array(ram);
    bytes.set(Buffer.from('HEAD'), 100);
    bytes.set(Buffer.from('-body-'), 2000);
    bytes.set(Buffer.from('second'), 3000);
    // packet 0 = two iovs (header and body in different places), packet 1 = one iov
    const iovs = Float64Array.from([100, 4, 2000, 6, 3000, 6]);
    expect(native.writevBatch(a, ram, iovs, Uint32Array.from([2, 1]), 2)).toBe(2);

    // A stream socket has no packet boundaries: one readv scatters all 16 bytes.
    const into = new ArrayBuffer(64);
    const lengths = new Int32Array(4);
    const readIovs = Float64Array.from([0, 4, 32, 32]);
    expect(native.readvBatch(b, into, readIovs, Uint32Array.from([2]), 1, lengths)).toBe(1);
    expect(lengths[0]).toBe(16);
    expect(Buffer.from(into, 0, 4).toString()).toBe('HEAD');
    expect(Buffer.from(into, 32, 12).toString()).toBe('-body-second');
    // Nothing left: EAGAIN ends the batch at 0 packets.
    expect(native.readvBatch(b, into, readIovs, Uint32Array.from([2]), 1, lengths)).toBe(0);
    // EOF: a 0-byte packet is counted and ends the batch.
    native.close(a);
    expect(native.readvBatch(b, into, Float64Array.from([0, 8, 8, 8]), Uint32Array.from([1, 1]), 2, lengths)).toBe(1);
    expect(lengths[0]).toBe(0);
    native.close(b);
  });

  it('writevBatch stops at EAGAIN and returns the packets written', () => {
    const [a, b] = native.unixSocketpair();
    const ram = new ArrayBuffer(65536);
    const npackets = 1024; // 64 MiB offered; a socket buffer takes far less
    const iovs = new Float64Array(npackets * 2);
    for (let i = 0; i < npackets; i++) iovs[2 * i + 1] = 65536;
    const counts = new Uint32Array(npackets).fill(1);
    const written = native.writevBatch(a, ram, iovs, counts, npackets);
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(npackets);
    native.close(a);
    native.close(b);
  });

  it('checks every iov against the buffer before any I/O, and names the operation', () => {
    const [a, b] = native.unixSocketpair();
    const ram = new ArrayBuffer(1024);
    const lengths = new Int32Array(4);
    const one = Uint32Array.from([1]);
    const cases: [Float64Array, Uint32Array, number, RegExp][] = [
      [Float64Array.from([1000, 25]), one, 1, /outside the buffer of 1024 bytes/],
      [Float64Array.from([-1, 4]), one, 1, /outside the buffer/],
      [Float64Array.from([0.5, 4]), one, 1, /outside the buffer/],
      [Float64Array.from([0, NaN]), one, 1, /outside the buffer/],
      [Float64Array.from([0, 4]), Uint32Array.from([2]), 1, /more iovs than iovs holds/],
      [Float64Array.from([0, 4]), Uint32Array.from([0]), 1, /has 0 iovs/],
      [new Float64Array(2 * 257), Uint32Array.from([257]), 1, new RegExp(`allowed 1..${native.maxIovPerPacket}`)],
      // packet 1 is bad: packet 0 must not have been written
      [Float64Array.from([0, 4, 1020, 8]), Uint32Array.from([1, 1]), 2, /iov 1 /],
    ];
    for (const [iovs, counts, n, message] of cases) {
      for (const [op, call] of [
        ['readv', () => native.readvBatch(b, ram, iovs, counts, n, lengths)],
        ['writev', () => native.writevBatch(a, ram, iovs, counts, n)],
      ] as const) {
        const e = thrownBy(call);
        expect(e).toMatchObject({ name: 'RangeError' });
        expect(e.message).toMatch(new RegExp(`^${op}: `));
        expect(e.message).toMatch(message);
      }
    }
    expect(native.read(b, new Uint8Array(8), 0, 8)).toBe(-1); // nothing was written
    // Wrong array types and counts are TypeErrors.
    const iovs = Float64Array.from([0, 4]);
    expect(thrownBy(() => native.writevBatch(a, ram, [0, 4] as never, one, 1))).toMatchObject({ name: 'TypeError', syscall: 'writev' });
    expect(thrownBy(() => native.writevBatch(a, ram, iovs, Int32Array.from([1]) as never, 1))).toMatchObject({ name: 'TypeError' });
    expect(thrownBy(() => native.writevBatch(a, ram, iovs, one, 2))).toMatchObject({ name: 'TypeError', syscall: 'writev' });
    expect(thrownBy(() => native.readvBatch(b, ram, iovs, one, 1, new Int32Array(0)))).toMatchObject({ name: 'TypeError', syscall: 'readv' });
    expect(thrownBy(() => native.readvBatch(b, ram, iovs, one, 1, new Uint32Array(1) as never))).toMatchObject({ name: 'TypeError' });
    // Kernel errors on the first packet throw with the errno.
    native.close(a);
    native.close(b);
    expect(thrownBy(() => native.writevBatch(a, ram, iovs, one, 1))).toMatchObject({ code: 'EBADF', syscall: 'writev' });
    expect(thrownBy(() => native.readvBatch(b, ram, iovs, one, 1, lengths))).toMatchObject({ code: 'EBADF', syscall: 'readv' });
    const efd = native.eventfdCreate(0, { nonblock: true });
    // an eventfd refuses reads shorter than 8 bytes
    expect(thrownBy(() => native.readvBatch(efd, ram, iovs, one, 1, lengths))).toMatchObject({ code: 'EINVAL', syscall: 'readv' });
    native.close(efd);
  });

  it('does not leak fds or handles across many watches', async () => {
    // A stopped watch closes its dup once libuv has closed the handle (next loop turn).
    const settle = () => new Promise((resolve) => setTimeout(resolve, 20));
    await settle();
    const before = openFdCount();
    for (let i = 0; i < 50; i++) {
      const efd = native.eventfdCreate(1, { nonblock: true });
      await new Promise<void>((resolve) => {
        const w = native.fdWatch(efd, 'r', () => {
          w.stop();
          resolve();
        });
      });
      native.close(efd);
    }
    await settle();
    expect(openFdCount()).toBe(before);
  });
});

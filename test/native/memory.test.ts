/**
 * Guest RAM backing: memfd, ftruncate, MAP_SHARED windows as ArrayBuffers, explicit munmap.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MAX_MAPPING_BYTES } from '../../src/native/kvm';
import { argError, native } from './realModeGuest';

const PAGE = 4096;
const O_CLOEXEC = 0o2000000;

describe('memory', () => {
  const fds: number[] = [];
  afterEach(() => {
    for (const fd of fds.splice(0)) fs.closeSync(fd);
  });

  function memfd(size: number | bigint): number {
    const fd = native.memfdCreate('baton-test-mem');
    fds.push(fd);
    native.ftruncate(fd, size);
    return fd;
  }

  it('memfd + ftruncate + fstatSize', () => {
    const fd = memfd(3 * PAGE);
    expect(native.fstatSize(fd)).toBe(3 * PAGE);
    native.ftruncate(fd, 5n * BigInt(PAGE));
    expect(native.fstatSize(fd)).toBe(5 * PAGE);
    // close-on-exec by default: a guest RAM fd must not leak into spawned helpers.
    const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1];
    expect(parseInt(flags, 8) & O_CLOEXEC).toBe(O_CLOEXEC);
  });

  it('two mappings of one memfd see each other, offset windows included', () => {
    const fd = memfd(4 * PAGE);
    const whole = native.mmapShared(fd, 4 * PAGE);
    const window = native.mmapShared(fd, PAGE, 2 * PAGE);
    try {
      expect(typeof whole.address).toBe('bigint');
      expect(whole.address % BigInt(PAGE)).toBe(0n);
      expect(whole.buffer.byteLength).toBe(4 * PAGE);
      expect(window.buffer.byteLength).toBe(PAGE);
      const all = new Uint8Array(whole.buffer);
      const win = new Uint8Array(window.buffer);
      all[2 * PAGE + 7] = 0xab;
      expect(win[7]).toBe(0xab);
      win[PAGE - 1] = 0xcd;
      expect(all[3 * PAGE - 1]).toBe(0xcd);
    } finally {
      native.munmap(whole.address, 4 * PAGE);
      native.munmap(window.address, PAGE);
    }
  });

  it('a reservation gets its ArrayBuffer first and the memfd later, at the same address', () => {
    const fd = memfd(4 * PAGE);
    const other = native.mmapShared(fd, 4 * PAGE);
    const reserved = native.mmapReserve(2 * PAGE);
    try {
      expect(reserved.buffer.byteLength).toBe(2 * PAGE);
      expect(() => native.mmapSharedAt(reserved.address, fd, PAGE)).toThrow(argError('mmapSharedAt')); // not the whole reservation
      expect(() => native.mmapSharedAt(reserved.address + BigInt(PAGE), fd, PAGE)).toThrow(argError('mmapSharedAt'));
      expect(() => native.mmapSharedAt(reserved.address, fd, 2 * PAGE, 100)).toThrow(argError('mmapSharedAt'));
      new Uint8Array(other.buffer)[PAGE + 3] = 0x5a;
      native.mmapSharedAt(reserved.address, fd, 2 * PAGE, PAGE);
      const view = new Uint8Array(reserved.buffer); // the buffer made before the fd existed
      expect(view[3]).toBe(0x5a);
      view[PAGE] = 0xa5;
      expect(new Uint8Array(other.buffer)[2 * PAGE]).toBe(0xa5);
    } finally {
      native.munmap(reserved.address, 2 * PAGE);
      native.munmap(other.address, 4 * PAGE);
    }
    expect(reserved.buffer.byteLength).toBe(0);
    expect(() => native.mmapSharedAt(reserved.address, fd, 2 * PAGE)).toThrow(argError('mmapSharedAt'));
  });

  it('munmap detaches the ArrayBuffer and refuses what it did not map', () => {
    const fd = memfd(2 * PAGE);
    const mapped = native.mmapShared(fd, 2 * PAGE);
    const view = new Uint8Array(mapped.buffer);
    view[0] = 1;
    expect(() => native.munmap(mapped.address, PAGE)).toThrow(argError('munmap')); // not the whole mapping
    expect(() => native.munmap(mapped.address + BigInt(PAGE), PAGE)).toThrow(argError('munmap'));
    native.munmap(mapped.address, 2 * PAGE);
    expect(mapped.buffer.byteLength).toBe(0);
    expect(view.length).toBe(0); // a stale view reads nothing instead of faulting
    expect(() => native.munmap(mapped.address, 2 * PAGE)).toThrow(argError('munmap'));
  });

  it('maps more than 4 GiB of RAM as several windows (Node caps one ArrayBuffer at 4 GiB)', () => {
    const total = 6 * 2 ** 30; // sparse: nothing is allocated until touched
    const fd = memfd(total);
    expect(() => native.mmapShared(fd, MAX_MAPPING_BYTES + PAGE)).toThrow(argError('mmapShared'));
    const low = native.mmapShared(fd, MAX_MAPPING_BYTES);
    const high = native.mmapShared(fd, total - MAX_MAPPING_BYTES, MAX_MAPPING_BYTES);
    try {
      expect(low.buffer.byteLength).toBe(MAX_MAPPING_BYTES);
      new Uint8Array(low.buffer)[MAX_MAPPING_BYTES - 1] = 0x11;
      new Uint8Array(high.buffer)[0] = 0x22;
      const check = native.mmapShared(fd, 2 * PAGE, MAX_MAPPING_BYTES - PAGE);
      const bytes = new Uint8Array(check.buffer);
      expect([bytes[PAGE - 1], bytes[PAGE]]).toEqual([0x11, 0x22]);
      native.munmap(check.address, 2 * PAGE);
    } finally {
      native.munmap(low.address, MAX_MAPPING_BYTES);
      native.munmap(high.address, total - MAX_MAPPING_BYTES);
    }
  });

  it('a mapping dropped without munmap is unmapped when collected', () => {
    // In a child with --expose-gc: map, drop the ArrayBuffer, collect, look at /proc/self/maps.
    const script = `
      const n = require(${JSON.stringify(path.resolve(__dirname, '../../native/build/Release/baton_native.node'))});
      const fd = n.memfdCreate('gc-test'); n.ftruncate(fd, 65536);
      const hex = n.mmapShared(fd, 65536).address.toString(16);
      const mapped = () => require('fs').readFileSync('/proc/self/maps', 'utf8').includes(hex + '-');
      const before = mapped();
      (async () => {
        for (let i = 0; i < 50 && mapped(); i++) { gc(); await new Promise((r) => setTimeout(r, 5)); }
        console.log(JSON.stringify({ before, after: mapped() }));
      })();
    `;
    const child = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 20000 });
    expect(child.stderr).toBe('');
    expect(JSON.parse(child.stdout)).toEqual({ before: true, after: false });
  });

  it('openFile gives a RAM backing file; errors name the call and errno', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-mem-'));
    try {
      const file = path.join(dir, 'ram');
      const fd = native.openFile(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
      fds.push(fd);
      native.ftruncate(fd, PAGE);
      const mapped = native.mmapShared(fd, PAGE);
      new Uint8Array(mapped.buffer)[5] = 0x77;
      native.munmap(mapped.address, PAGE);
      expect(fs.readFileSync(file)[5]).toBe(0x77);
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      expect(() => native.openFile(path.join(dir, 'missing'), fs.constants.O_RDWR, 0o600)).toThrow(
        expect.objectContaining({ code: 'ENOENT', syscall: 'open' }),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }

    const closed = fs.openSync('/dev/null', 'r');
    fs.closeSync(closed);
    expect(() => native.ftruncate(closed, PAGE)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'ftruncate' }));
    expect(() => native.fstatSize(closed)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'fstat' }));
    expect(() => native.mmapShared(closed, PAGE)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'mmap' }));
    const fd = memfd(PAGE);
    expect(() => native.mmapShared(fd, PAGE, 100)).toThrow(argError('mmapShared'));
    expect(() => native.mmapShared(fd, 0)).toThrow(argError('mmapShared'));
    expect(() => native.memfdCreate(42 as unknown as string)).toThrow(argError('memfdCreate'));
  });
});

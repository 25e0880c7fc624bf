/**
 * Types for the I/O half of the native addon (native/src/{fdio,tap,unix_socket,vhost}.cc):
 * fds, eventfd, readiness, batched readv/writev, TAP, UNIX sockets with fds, vhost-net.
 * The contract is src/native/API.md; every failure throws an Error carrying `code` (errno
 * name), `errno` and `syscall` (the operation, e.g. "TUNSETIFF"), see {@link NativeIoError}.
 */

/** Shape of the errors the wrappers throw for a failed kernel operation. */
export interface NativeIoError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** A libuv poll watch on one fd; callbacks run on the JS thread. */
export interface FdWatch {
  /** Stops watching and releases the handle. Idempotent; allowed inside the callback. */
  stop(): void;
  /** Changes what is watched; throws once stopped. */
  update(events: FdWatchEvents): void;
  readonly fd: number;
  readonly active: boolean;
}

export type FdWatchEvents = 'r' | 'w' | 'rw';
export type FdType = 'char' | 'socket' | 'file' | 'fifo' | 'other';

/** Any byte container the wrappers read or write in place. */
export type ByteSource = ArrayBuffer | ArrayBufferView;

export interface TapOpenOptions {
  vnetHdr?: boolean;
  multiQueue?: boolean;
  /** Defaults to /dev/net/tun. */
  tunPath?: string;
}

export interface VhostMemoryRegion {
  guestPhysAddr: bigint | number;
  memorySize: bigint | number;
  /** Where this region of guest RAM is mapped in this process. */
  userspaceAddr: bigint | number;
}

export interface VhostVringAddr {
  descUserAddr: bigint | number;
  availUserAddr: bigint | number;
  usedUserAddr: bigint | number;
  logGuestAddr?: bigint | number;
  /** VHOST_VRING_F_LOG */
  flags?: number;
}

export interface IoNative {
  // --- fds, eventfd, readiness (fdio.cc) ---
  /** Always EFD_CLOEXEC. */
  eventfdCreate(initval: number, options?: { nonblock?: boolean; semaphore?: boolean }): number;
  /** null when the counter is zero on a non-blocking eventfd (EAGAIN). */
  eventfdRead(fd: number): bigint | null;
  eventfdWrite(fd: number, value: bigint | number): void;
  /**
   * Polls a private dup of `fd` (so closing `fd` behind the watch cannot crash libuv; the
   * file stays open until the watch stops). Sets the file O_NONBLOCK. An fd error (POLLERR)
   * gives one last callback with what was asked, then ends the watch.
   */
  fdWatch(fd: number, events: FdWatchEvents, cb: (readable: boolean, writable: boolean) => void): FdWatch;
  /** Stops this thread's watch on the fd first, if there is one. */
  close(fd: number): void;
  /** The copy is close-on-exec. */
  dup(fd: number): number;
  setNonBlocking(fd: number, on: boolean): void;
  setCloexec(fd: number, on: boolean): void;
  fdType(fd: number): FdType;
  /** Bytes read, or -1 on EAGAIN. Offsets are relative to the view. */
  read(fd: number, buffer: ByteSource, offset: number, length: number): number;
  /** Bytes written, or -1 on EAGAIN. */
  write(fd: number, buffer: ByteSource, offset: number, length: number): number;
  /**
   * One readv per packet into `buffer` (no copy), until EAGAIN or `npackets`.
   * `iovs` holds (offset, length) pairs, consumed `iovCounts[i]` at a time for packet i;
   * `lengthsOut[i]` receives packet i's byte count. Returns the packets read. Throws only
   * when the first packet fails; a 0-byte read (EOF) is counted and ends the batch.
   */
  readvBatch(
    fd: number,
    buffer: ByteSource,
    iovs: Float64Array,
    iovCounts: Uint32Array,
    npackets: number,
    lengthsOut: Int32Array,
  ): number;
  /** One writev per packet from `buffer`, until EAGAIN or `npackets`; returns packets written. */
  writevBatch(fd: number, buffer: ByteSource, iovs: Float64Array, iovCounts: Uint32Array, npackets: number): number;
  /** Most iovs one packet may use in readvBatch/writevBatch. */
  readonly maxIovPerPacket: number;

  // --- TAP (tap.cc) ---
  /** Always IFF_TAP|IFF_NO_PI; O_NONBLOCK|O_CLOEXEC. Created in the caller's network namespace. */
  tapOpen(ifname: string, options?: TapOpenOptions): { fd: number; ifname: string };
  tapGetIff(fd: number): { ifname: string; flags: number };
  tapGetFeatures(fd: number): number;
  tapSetOffload(fd: number, flags: number): void;
  tapSetVnetHdrSz(fd: number, size: number): void;
  tapGetVnetHdrSz(fd: number): number;
  tapSetQueue(fd: number, attach: boolean): void;
  tapSetPersist(fd: number, on: boolean): void;
  tapSetSndbuf(fd: number, bytes: number): void;
  readonly tapConstants: Readonly<typeof TAP>;

  // --- UNIX sockets with fds (unix_socket.cc); all non-blocking and close-on-exec ---
  unixListen(path: string, backlog: number): number;
  /** -1 when no connection is pending. */
  unixAccept(fd: number): number;
  /** Throws EAGAIN when the listener's backlog is full. */
  unixConnect(path: string): number;
  unixSocketpair(): [number, number];
  /** Bytes sent, or -1 on EAGAIN. At most {@link MAX_FDS_PER_MESSAGE} fds; fds need data.length >= 1. */
  sendmsgFds(fd: number, data: ByteSource, fds: number[]): number;
  /** null on EAGAIN; empty data means EOF. More fds than maxFds throws (code EMSGSIZE, MSG_CTRUNC). */
  recvmsgFds(fd: number, maxBytes: number, maxFds: number): { data: Buffer; fds: number[] } | null;
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  readonly maxFdsPerMessage: number;

  // --- vhost-net (vhost.cc) ---
  vhostNetOpen(path?: string): number;
  vhostSetOwner(fd: number): void;
  vhostGetFeatures(fd: number): bigint;
  vhostSetFeatures(fd: number, features: bigint | number): void;
  vhostSetMemTable(fd: number, regions: VhostMemoryRegion[]): void;
  vhostSetVringNum(fd: number, index: number, num: number): void;
  vhostSetVringBase(fd: number, index: number, num: number): void;
  vhostGetVringBase(fd: number, index: number): number;
  vhostSetVringAddr(fd: number, index: number, addr: VhostVringAddr): void;
  /** eventFd -1 (VHOST_FILE_UNBIND) unbinds. */
  vhostSetVringKick(fd: number, index: number, eventFd: number): void;
  vhostSetVringCall(fd: number, index: number, eventFd: number): void;
  /** tapFd -1 detaches the backend. */
  vhostNetSetBackend(fd: number, index: number, tapFd: number): void;
  readonly vhostConstants: Readonly<typeof VHOST>;
}

/** <linux/if_tun.h> values (the addon exports the same as `tapConstants`). */
export const TAP = Object.freeze({
  IFF_TUN: 0x0001,
  IFF_TAP: 0x0002,
  IFF_NAPI: 0x0010,
  IFF_NAPI_FRAGS: 0x0020,
  IFF_NO_PI: 0x1000,
  IFF_ONE_QUEUE: 0x2000,
  IFF_VNET_HDR: 0x4000,
  IFF_TUN_EXCL: 0x8000,
  IFF_MULTI_QUEUE: 0x0100,
  IFF_ATTACH_QUEUE: 0x0200,
  IFF_DETACH_QUEUE: 0x0400,
  IFF_PERSIST: 0x0800,
  IFF_NOFILTER: 0x1000,
  /** The reader accepts packets with partial checksums. */
  TUN_F_CSUM: 0x01,
  TUN_F_TSO4: 0x02,
  TUN_F_TSO6: 0x04,
  TUN_F_TSO_ECN: 0x08,
  TUN_F_UFO: 0x10,
  /** Linux >= 6.2 */
  TUN_F_USO4: 0x20,
  /** Linux >= 6.2 */
  TUN_F_USO6: 0x40,
  IFNAMSIZ: 16,
});

/** <linux/vhost.h> values (the addon exports the same as `vhostConstants`). */
export const VHOST = Object.freeze({
  VHOST_FILE_UNBIND: -1,
  VHOST_VRING_F_LOG: 0,
  VHOST_F_LOG_ALL: 26,
  VHOST_NET_F_VIRTIO_NET_HDR: 27,
});

/** SCM_MAX_FD: the most fds one sendmsg may carry. */
export const MAX_FDS_PER_MESSAGE = 253;

/** Sizes of the virtio-net header a TAP prepends with IFF_VNET_HDR (TUNSETVNETHDRSZ). */
export const VNET_HDR_SIZE = Object.freeze({
  /** struct virtio_net_hdr: legacy, no mergeable buffers; the TAP's default. */
  legacy: 10,
  /** struct virtio_net_hdr_mrg_rxbuf / virtio 1.0: adds num_buffers. */
  mergeable: 12,
});

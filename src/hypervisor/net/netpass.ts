/**
 * Netpass: while a migrating VM is paused its NICs read nothing, so frames pile up in the
 * source's TAP — and are lost if the destination uses another TAP (new-tap) or host. The
 * recorder keeps reading the source's TAP queues during the switchover and buffers what
 * arrives (bounded); the frames then travel over the migration channel and the destination
 * injects them before anything newer. Frames are kept exactly as the TAP's read returned
 * them (vnet header included), which is also what the destination's NIC expects.
 */
import { native } from '../../native';
import type { FdWatch } from '../../native/io';

export const NETPASS_MAX_FRAMES = 16384;
export const NETPASS_MAX_BYTES = 32 * 1024 * 1024;
const FRAME_MAX = 65536 + 64;

export interface NetpassCapture {
  /** Per netdev id, per TAP queue: the frames in arrival order. */
  frames: Map<string, Buffer[][]>;
  frameCount: number;
  bytes: number;
  dropped: number;
}

export class NetpassRecorder {
  private readonly watches: FdWatch[] = [];
  private readonly capture: NetpassCapture = { frames: new Map(), frameCount: 0, bytes: 0, dropped: 0 };
  private readonly scratch = Buffer.allocUnsafe(FRAME_MAX);

  constructor(netdevs: { id: string; fds: number[] }[]) {
    for (const { id, fds } of netdevs) {
      const queues: Buffer[][] = fds.map(() => []);
      this.capture.frames.set(id, queues);
      fds.forEach((fd, q) => {
        this.watches.push(native.fdWatch(fd, 'r', () => this.drain(fd, queues[q])));
        this.drain(fd, queues[q]);
      });
    }
  }

  private drain(fd: number, into: Buffer[]): void {
    for (;;) {
      let n: number;
      try {
        n = native.read(fd, this.scratch, 0, this.scratch.length);
      } catch {
        return;
      }
      if (n <= 0) return;
      if (this.capture.frameCount >= NETPASS_MAX_FRAMES || this.capture.bytes + n > NETPASS_MAX_BYTES) {
        this.capture.dropped++;
        continue;
      }
      into.push(Buffer.from(this.scratch.subarray(0, n)));
      this.capture.frameCount++;
      this.capture.bytes += n;
    }
  }

  /** Stops reading; returns what was captured. */
  stop(): NetpassCapture {
    for (const w of this.watches.splice(0)) w.stop();
    return this.capture;
  }
}

/** Wire form of one netdev's capture: head {queues: [[len...]...]}, one blob per queue. */
export function encodeCapture(queues: Buffer[][]): { head: { queues: number[][] }; blobs: { [k: string]: Buffer } } {
  const blobs: { [k: string]: Buffer } = {};
  queues.forEach((frames, q) => { blobs[`q${q}`] = Buffer.concat(frames); });
  return { head: { queues: queues.map((frames) => frames.map((f) => f.length)) }, blobs };
}

export function decodeCapture(head: { queues: number[][] }, blob: (name: string) => Buffer): Buffer[][] {
  return head.queues.map((lengths, q) => {
    const data = blob(`q${q}`);
    const frames: Buffer[] = [];
    let at = 0;
    for (const len of lengths) {
      if (!Number.isInteger(len) || len <= 0 || at + len > data.length) throw new Error(`netpass queue ${q}: frame lengths run past the data`);
      frames.push(data.subarray(at, at + len));
      at += len;
    }
    return frames;
  });
}

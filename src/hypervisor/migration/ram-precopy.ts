/**
 * Live RAM copy for migrations without shared memory: every non-zero chunk is sent while
 * the guest runs, with KVM dirty logging on; then the pages the guest dirtied meanwhile,
 * a few rounds, until what is left is small; the last dirty pages go inside the pause.
 * The destination applies `ram` sections whenever they come (after the machine section).
 */
import { native } from '../../native';
import { KVM_MEM_LOG_DIRTY_PAGES } from '../../native/kvm';
import type { Vm } from '../vm';
import type { ByteSink } from './byte-channel';
import { encodeRecord, encodeSection } from './stream-format';

const PAGE = 4096;
/** RAM travels in sections of at most this much. */
export const RAM_CHUNK = 4 * 1024 * 1024;
/** Stop iterating when a round found less than this dirty, or after MAX_ROUNDS. */
const SMALL_ENOUGH_BYTES = 2 * 1024 * 1024;
const MAX_ROUNDS = 8;

export function isZero(bytes: Uint8Array): boolean {
  // One comparison against a zero buffer of the same size (native memcmp): fast enough to
  // run over all of RAM.
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).equals(zeroChunk(bytes.byteLength));
}

let zeros = Buffer.alloc(0);
function zeroChunk(len: number): Buffer {
  if (zeros.length < len) zeros = Buffer.alloc(len);
  return zeros.subarray(0, len);
}

export class RamPrecopy {
  bytesSent = 0;
  sections = 0;
  rounds = 0;
  private readonly bitmaps: Buffer[];
  private logging = false;

  constructor(private readonly vm: Vm, private readonly sink: ByteSink) {
    this.bitmaps = vm.memory.regions.map((r) => Buffer.alloc(Math.ceil(r.size / PAGE / 64) * 8));
  }

  private setLogging(on: boolean): void {
    this.vm.memory.regions.forEach((r, slot) => native.kvmSetUserMemoryRegion(this.vm.vmFd, {
      slot, flags: on ? KVM_MEM_LOG_DIRTY_PAGES : 0, guestPhysAddr: r.gpa, memorySize: r.size, userspaceAddr: r.hostAddress,
    }));
    this.logging = on;
  }

  private async send(gpa: number, bytes: Uint8Array): Promise<void> {
    await this.sink.write(encodeSection('ram', 1, encodeRecord({ gpa }, { data: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) })));
    this.sections++;
    this.bytesSent += bytes.byteLength;
  }

  /** While the guest runs: everything once, then dirty rounds until little is left. */
  async live(): Promise<void> {
    this.setLogging(true);
    for (const region of this.vm.memory.regions) {
      for (let off = 0; off < region.size; off += RAM_CHUNK) {
        const bytes = region.bytes.subarray(off, Math.min(off + RAM_CHUNK, region.size));
        if (!isZero(bytes)) await this.send(region.gpa + off, bytes);
      }
    }
    for (this.rounds = 1; this.rounds <= MAX_ROUNDS; this.rounds++) {
      if ((await this.sendDirty()) < SMALL_ENOUGH_BYTES) break;
    }
  }

  /** Inside the pause: what the guest dirtied since the last round. */
  async final(): Promise<void> {
    await this.sendDirty();
    this.stop();
  }

  /** Dirty logging off again (also after a failed or cancelled migration). */
  stop(): void {
    if (this.logging) this.setLogging(false);
  }

  /** Sends the dirty pages of every slot as runs of contiguous pages; returns the bytes. */
  private async sendDirty(): Promise<number> {
    let total = 0;
    for (const [slot, region] of this.vm.memory.regions.entries()) {
      const bitmap = this.bitmaps[slot];
      native.kvmGetDirtyLog(this.vm.vmFd, slot, bitmap);
      const pages = region.size / PAGE;
      let runStart = -1;
      for (let page = 0; page <= pages; page++) {
        const dirty = page < pages && (bitmap[page >> 3] & (1 << (page & 7))) !== 0;
        if (dirty && runStart < 0) runStart = page;
        if ((!dirty || page - runStart >= RAM_CHUNK / PAGE) && runStart >= 0) {
          const bytes = region.bytes.subarray(runStart * PAGE, page * PAGE);
          await this.send(region.gpa + runStart * PAGE, bytes);
          total += bytes.byteLength;
          runStart = dirty ? page : -1;
        }
      }
    }
    return total;
  }
}

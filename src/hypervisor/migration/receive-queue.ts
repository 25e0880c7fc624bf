/**
 * Bytes a migration channel received and its reader has not taken yet. Both socket channels
 * (UNIX and TCP) push what arrives and read exactly n bytes at a time; a read that must wait
 * is woken by the next push, end of stream or failure.
 */
import { StreamError } from './stream-format';

export class ReceiveQueue {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private failure?: Error;
  private waiter?: () => void;

  constructor(private readonly description: string) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.wake();
  }

  /** The peer closed its side (or we closed ours): reads of more than is queued fail. */
  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(err: Error): void {
    this.failure = err;
    this.wake();
  }

  get done(): boolean {
    return this.ended || this.failure !== undefined;
  }

  /** Resolves at the next push, end or failure (for callers waiting on something else that arrives alongside). */
  async next(): Promise<void> {
    await new Promise<void>((resolve) => { this.waiter = resolve; });
  }

  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Exactly n bytes, or a StreamError naming `section` when the stream ends or fails first. */
  async read(n: number, section: string): Promise<Buffer> {
    while (this.buffered < n) {
      if (this.failure) throw new StreamError(`channel ${this.description} failed: ${this.failure.message}`, section);
      if (this.ended) throw new StreamError(`truncated: the peer closed ${this.description} with ${n - this.buffered} bytes missing`, section);
      await this.next();
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      const take = Math.min(c.length, n - got);
      c.copy(out, got, 0, take);
      got += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    this.buffered -= n;
    return out;
  }
}

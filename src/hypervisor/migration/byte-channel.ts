/**
 * Where a VM state stream goes to and comes from. A file for save/restore; a UNIX socket
 * (with fds alongside) for local migration; a TCP socket for migration without fds. The
 * stream code sees only these interfaces.
 */
import fs from 'node:fs';
import { StreamError } from './stream-format';

export interface ByteSink {
  write(chunks: Buffer[]): Promise<void>;
  /** Sends fds with the next bytes; only channels that can carry fds implement it. */
  writeWithFds?(chunk: Buffer, fds: number[]): Promise<void>;
  close(): Promise<void>;
}

export interface ByteSource {
  /** Exactly n bytes, or a StreamError naming `section` when the stream ends early. */
  read(n: number, section: string): Promise<Buffer>;
  /** Fds that arrived with the stream, oldest first. */
  takeFds?(count: number, section: string): Promise<number[]>;
  close(): Promise<void>;
}

/** A two-way migration channel (UNIX or TCP socket): the stream one way, the destination's replies the other. */
export interface MigrationChannel extends ByteSink, ByteSource {
  /** The URI it was made from, for errors. */
  readonly description: string;
}

export class FileSink implements ByteSink {
  private readonly fd: number;
  constructor(readonly path: string) {
    this.fd = fs.openSync(path, 'w', 0o600);
  }
  async write(chunks: Buffer[]): Promise<void> {
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) off += fs.writeSync(this.fd, c, off, c.length - off);
    }
  }
  async close(): Promise<void> {
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }
}

export class FileSource implements ByteSource {
  private readonly fd: number;
  private position = 0;
  constructor(readonly path: string) {
    try {
      this.fd = fs.openSync(path, 'r');
    } catch (err) {
      throw new StreamError(`cannot open ${path}: ${(err as NodeJS.ErrnoException).code}`);
    }
  }
  async read(n: number, section: string): Promise<Buffer> {
    const b = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const r = fs.readSync(this.fd, b, got, n - got, this.position);
      if (r === 0) throw new StreamError(`truncated: wanted ${n} bytes, the file ended after ${got}`, section);
      got += r;
      this.position += r;
    }
    return b;
  }
  async close(): Promise<void> {
    fs.closeSync(this.fd);
  }
}

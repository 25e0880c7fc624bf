import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { DomainErrorCode } from './errors';

const log = loggerFor('store-lock');

/**
 * Serializes writers of one directory across processes with a kernel flock(2) on
 * `<dir>/.lock`. Node has no flock, so a tiny child holds it for us:
 * `flock -w T <dir>/.lock sh -c 'echo locked; exec cat'`. The child prints `locked` once it
 * owns the lock and then waits on its stdin; when we close stdin (or die, even by kill -9,
 * which closes the pipe) `cat` ends and the kernel drops the lock. So there is no lock file
 * to go stale and no pid guessing: a dead holder never blocks anyone.
 */
export const LOCK_FILE_NAME = '.lock';
const DEFAULT_TIMEOUT_MS = 30_000;
/** flock(1) exits with this status when -w runs out. */
const FLOCK_TIMEOUT_STATUS = 1;

export async function withDirectoryLock<T>(dir: string, fn: () => T | Promise<T>, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<T> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const lockFile = path.join(dir, LOCK_FILE_NAME);
  const holder = spawn('flock', ['-w', String(Math.max(1, Math.ceil(timeoutMs / 1000))), lockFile, 'sh', '-c', 'echo locked; exec cat'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => holder.on('close', (code) => resolve(code)));
  const acquired = await new Promise<boolean>((resolve, reject) => {
    let stderr = '';
    holder.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    holder.stdout.once('data', () => resolve(true));
    holder.once('error', (err) => reject(new BatonError(DomainErrorCode.StoreLocked, `cannot run flock(1) to lock ${lockFile}: ${err.message}; install util-linux`)));
    void exited.then((code) => {
      if (code === FLOCK_TIMEOUT_STATUS && stderr === '') resolve(false);
      else reject(new BatonError(DomainErrorCode.StoreLocked, `cannot lock ${lockFile}: flock exited with ${code}: ${stderr.trim()}`));
    });
  });
  if (!acquired) {
    throw new BatonError(DomainErrorCode.StoreLocked, `another baton process has held ${lockFile} for more than ${timeoutMs} ms; retry, or look for a hung baton command`, { lockFile });
  }
  log.debug('store lock taken', { lockFile, holderPid: holder.pid });
  try {
    return await fn();
  } finally {
    holder.stdin.end();
    await exited;
    log.debug('store lock released', { lockFile });
  }
}

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../util/errors';
import { DomainErrorCode } from './errors';

/**
 * Crash-safe file replacement: write a temp file in the same directory, fsync it, rename it
 * over the target, fsync the directory. A reader (or a crash at any instant) sees the old
 * file or the new one, never a torn one. Temp files are dot-files ending in `.tmp-<pid>-<rand>`;
 * a writer killed mid-way leaves one behind, which `removeStaleTempFiles` clears under the lock.
 */

const TEMP_MARK = '.tmp-';

/**
 * Test hook: when set (milliseconds), a writer sleeps between fsync of the temp file and the
 * rename, so a test can kill -9 it at exactly that point. Never set outside tests.
 */
const PAUSE_BEFORE_RENAME_ENV = 'BATON_TEST_PAUSE_BEFORE_RENAME_MS';

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function ioError(action: string, file: string, err: unknown): BatonError {
  const reason = err instanceof Error ? err.message : String(err);
  return new BatonError(DomainErrorCode.StoreIo, `cannot ${action} ${file}: ${reason}; check the directory exists and is writable`, { file });
}

/** Flushes a directory's entries (the rename or unlink) to disk. */
export function fsyncDirectory(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function writeFileAtomic(file: string, data: string, mode = 0o644): void {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const fd = fs.openSync(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, mode);
    try {
      fs.writeSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    const pauseMs = Number(process.env[PAUSE_BEFORE_RENAME_ENV] ?? 0);
    if (pauseMs > 0) sleepSync(pauseMs);
    fs.renameSync(temp, file);
    fsyncDirectory(dir);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw ioError('write', file, err);
  }
}

/** Removes a file durably; a missing file is not an error. */
export function removeFileDurably(file: string): void {
  try {
    fs.rmSync(file, { force: true });
    fsyncDirectory(path.dirname(file));
  } catch (err) {
    throw ioError('remove', file, err);
  }
}

/** True for names `writeFileAtomic` uses for its temp files. */
export function isTempFileName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARK);
}

/**
 * Deletes temp files left by writers that were killed. Only safe while holding the store
 * lock: then no other writer can be between its open and its rename.
 */
export function removeStaleTempFiles(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const stale = names.filter(isTempFileName);
  for (const name of stale) fs.rmSync(path.join(dir, name), { force: true });
  return stale;
}

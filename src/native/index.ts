/**
 * The native addon, typed. Built by `npm run build:native` (scripts/setup.sh does it).
 * Found by walking up from this file to the repository root: the same from src/ (ts-jest),
 * dist/ (built JS) and the single-file hypervisor bundle.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { IoNative } from './io';
import type { KvmNative } from './kvm';

export type Native = KvmNative & IoNative;

const ADDON_RELATIVE = path.join('native', 'build', 'Release', 'baton_native.node');

function addonPath(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, ADDON_RELATIVE);
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) return path.join(__dirname, '..', '..', ADDON_RELATIVE);
  }
}

const ADDON_PATH = addonPath();

function load(): Native {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(ADDON_PATH) as Native;
  } catch (err) {
    throw new Error(`cannot load the native addon ${ADDON_PATH}: ${(err as Error).message}; build it with \`npm run build:native\` (or run scripts/setup.sh)`);
  }
}

export const native: Native = load();

/** Closes an fd we own, ignoring "already closed": for clean-up paths that must not throw. */
export function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // already closed, or handed to a new owner: nothing left to release
  }
}

/**
 * The native addon, typed. Built by `npm run build:native` (scripts/setup.sh does it);
 * the path is the same from src/ (ts-jest) and dist/ (built JS): both sit one level below
 * the repository root.
 */
import path from 'node:path';
import type { IoNative } from './io';
import type { KvmNative } from './kvm';

export type Native = KvmNative & IoNative;

const ADDON_PATH = path.join(__dirname, '..', '..', 'native', 'build', 'Release', 'baton_native.node');

function load(): Native {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(ADDON_PATH) as Native;
  } catch (err) {
    throw new Error(`cannot load the native addon ${ADDON_PATH}: ${(err as Error).message}; build it with \`npm run build:native\` (or run scripts/setup.sh)`);
  }
}

export const native: Native = load();

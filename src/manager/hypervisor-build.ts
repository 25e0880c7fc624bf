import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/**
 * The hypervisor build id recorded for every running domain, which live upgrade compares
 * with the installed build: `<package version>+<first 12 hex digits of a SHA-256>` over
 * everything baton-hv executes — the compiled JavaScript under dist/{hypervisor,native,util}
 * and the native addon native/build/Release/baton_native.node (path and bytes of each file,
 * in sorted order). Any rebuild that changes the hypervisor's code changes the id; a rebuild
 * of the CLI alone (dist/commands, dist/manager, dist/domain) does not. Source maps are left
 * out: they do not run.
 */
const PACKAGE_ROOT = path.resolve(__dirname, '../..');
const HASHED_DIRS = ['dist/hypervisor', 'dist/native', 'dist/util'];
const NATIVE_ADDON = 'native/build/Release/baton_native.node';

/** The baton-hv entry point this installation starts. */
export const HYPERVISOR_ENTRY = path.join(PACKAGE_ROOT, 'bin/baton-hv.js');

function filesUnder(dir: string): string[] {
  const absolute = path.join(PACKAGE_ROOT, dir);
  if (!fs.existsSync(absolute)) return [];
  return (fs.readdirSync(absolute, { recursive: true }) as string[])
    .filter((name) => name.endsWith('.js') || name.endsWith('.node'))
    .map((name) => path.join(dir, name));
}

let cached: string | undefined;

export function hypervisorBuildId(): string {
  if (cached !== undefined) return cached;
  const version = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const files = [...HASHED_DIRS.flatMap(filesUnder), ...(fs.existsSync(path.join(PACKAGE_ROOT, NATIVE_ADDON)) ? [NATIVE_ADDON] : [])].sort();
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(`${file}\0`);
    hash.update(fs.readFileSync(path.join(PACKAGE_ROOT, file)));
    hash.update('\0');
  }
  cached = `${version}+${hash.digest('hex').slice(0, 12)}`;
  return cached;
}

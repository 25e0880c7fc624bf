/**
 * Where the Linux guest image lives. scripts/build-guest-image.sh builds Debian's kernel and a
 * busybox initramfs into `<cache>/guest-image/<key>/` and points `<cache>/guest-image/current`
 * at the newest build; this module resolves that pointer for the hypervisor and the tests.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BatonError } from './util/errors';

export interface GuestImagePaths {
  /** The kernel as Debian ships it (Linux x86 boot protocol). */
  bzImage: string;
  /** The ELF inside the bzImage, with a Xen PVH entry note. */
  vmlinux: string;
  /** newc initramfs, gzip-compressed. */
  initramfs: string;
  /** The same initramfs uncompressed: less for an emulated ring 0 to unpack. */
  initramfsUncompressed: string;
  /** A file holding the kernel command line suited to this host (one line). */
  cmdlineDefault: string;
  /** The build's cache key (the directory `current` points at). */
  key: string;
}

export const GUEST_IMAGE_BUILD_COMMAND = 'scripts/build-guest-image.sh';

/** The cache root, resolved as scripts/setup.sh resolves it. */
export function batonCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BATON_CACHE_DIR) return env.BATON_CACHE_DIR;
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'baton');
}

/**
 * The files of the current guest image. Throws BatonError `EGUESTIMAGE` naming the missing
 * file and the command that builds it.
 */
export function guestImagePaths(cacheDir: string = batonCacheDir()): GuestImagePaths {
  const current = path.join(cacheDir, 'guest-image', 'current');
  let key: string;
  try {
    key = path.basename(fs.realpathSync(current));
  } catch {
    throw missing(current, cacheDir);
  }
  const dir = path.join(cacheDir, 'guest-image', key);
  const paths: GuestImagePaths = {
    bzImage: path.join(dir, 'bzImage'),
    vmlinux: path.join(dir, 'vmlinux'),
    initramfs: path.join(dir, 'initramfs.cpio.gz'),
    initramfsUncompressed: path.join(dir, 'initramfs.cpio'),
    cmdlineDefault: path.join(dir, 'cmdline.default'),
    key,
  };
  for (const file of [paths.bzImage, paths.vmlinux, paths.initramfs, paths.initramfsUncompressed, paths.cmdlineDefault]) {
    if (!fs.existsSync(file)) throw missing(file, cacheDir);
  }
  return paths;
}

/** The default kernel command line of an image (the content of `cmdlineDefault`). */
export function guestImageCmdline(paths: GuestImagePaths = guestImagePaths()): string {
  return fs.readFileSync(paths.cmdlineDefault, 'utf8').trim();
}

function missing(file: string, cacheDir: string): BatonError {
  return new BatonError(
    'EGUESTIMAGE',
    `Linux guest image file ${file} is missing; build it with ` +
      `BATON_CACHE_DIR=${cacheDir} ${GUEST_IMAGE_BUILD_COMMAND} (or npm run setup)`,
    { file, cacheDir },
  );
}

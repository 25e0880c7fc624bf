/**
 * The Linux guest image, built for real by scripts/build-guest-image.sh from Debian packages,
 * then booted under QEMU with TCG (this host's KVM cannot run Linux's ring 0) to prove the
 * image works before baton-hv boots it.
 */
import { spawn, spawnSync, ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { batonCacheDir, guestImageCmdline, guestImagePaths, GuestImagePaths } from '../../src/guest-image';
import { BatonError } from '../../src/util/errors';

const REPO = path.resolve(__dirname, '../..');
const BUILDER = path.join(REPO, 'scripts/build-guest-image.sh');
const CMDLINE_LIBRARY = path.join(REPO, 'scripts/guest-image/cmdline.sh');
const READY_LINE = /^baton-guest: ready\r?$/m;
const SHELL_PROMPT = /baton-guest:\/# /; // PS1 from scripts/guest-image/profile
const BOOT_TIMEOUT_MS = 120_000;
const SHUTDOWN_TIMEOUT_MS = 60_000;

/** Linux x86 boot protocol setup header (Documentation/arch/x86/boot.rst). */
const SETUP_HEADER = { magicOffset: 0x202, magic: 'HdrS', versionOffset: 0x206 } as const;
const MIN_BOOT_PROTOCOL = 0x020c; // 2.12: 64-bit entry, xloadflags

/** ELF64 little-endian fields needed to walk the program headers to the notes. */
const ELF = { magic: '\x7fELF', class64: 2, classOffset: 4, phoff: 0x20, phentsize: 0x36, phnum: 0x38 } as const;
const PHDR = { type: 0x00, offset: 0x08, filesz: 0x20 } as const;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

interface ElfNote {
  name: string;
  type: number;
  desc: Buffer;
}

function elfNotes(image: Buffer): ElfNote[] {
  const notes: ElfNote[] = [];
  const phoff = Number(image.readBigUInt64LE(ELF.phoff));
  const phentsize = image.readUInt16LE(ELF.phentsize);
  const phnum = image.readUInt16LE(ELF.phnum);
  for (let i = 0; i < phnum; i++) {
    const phdr = phoff + i * phentsize;
    if (image.readUInt32LE(phdr + PHDR.type) !== PT_NOTE) continue;
    let at = Number(image.readBigUInt64LE(phdr + PHDR.offset));
    const end = at + Number(image.readBigUInt64LE(phdr + PHDR.filesz));
    while (at + 12 <= end) {
      // Note header: namesz, descsz, type; name and desc each padded to 4 bytes.
      const namesz = image.readUInt32LE(at);
      const descsz = image.readUInt32LE(at + 4);
      const type = image.readUInt32LE(at + 8);
      const nameAt = at + 12;
      const descAt = nameAt + align4(namesz);
      notes.push({
        name: image.toString('latin1', nameAt, nameAt + Math.max(0, namesz - 1)),
        type,
        desc: image.subarray(descAt, descAt + descsz),
      });
      at = descAt + align4(descsz);
    }
  }
  return notes;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function runBuilder(): { output: string; seconds: number } {
  const started = process.hrtime.bigint();
  const run = spawnSync('bash', [BUILDER], { encoding: 'utf8', timeout: 600_000, env: process.env });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const output = `${run.stdout ?? ''}${run.stderr ?? ''}`;
  if (run.status !== 0) throw new Error(`${BUILDER} failed (status ${run.status}, ${run.signal ?? 'no signal'}):\n${output}`);
  return { output, seconds };
}

/** cmdline_param / ipv4_cidr_valid from the very file /init sources, run by busybox sh. */
function guestShell(script: string): { status: number | null; stdout: string } {
  const run = spawnSync('busybox', ['sh', '-c', `. '${CMDLINE_LIBRARY}'; ${script}`], { encoding: 'utf8' });
  if (run.error) throw run.error;
  return { status: run.status, stdout: run.stdout.trim() };
}

/** A QEMU process whose serial port is its stdin/stdout. */
class QemuGuest {
  readonly process: ChildProcessWithoutNullStreams;
  output = '';
  private exited: Promise<number | null>;

  constructor(args: string[]) {
    this.process = spawn('qemu-system-x86_64', args, { stdio: 'pipe' });
    this.process.stdout.on('data', (chunk: Buffer) => (this.output += chunk.toString('latin1')));
    this.process.stderr.on('data', (chunk: Buffer) => (this.output += chunk.toString('latin1')));
    this.exited = new Promise((resolve) => this.process.on('exit', (code) => resolve(code)));
  }

  /** Resolves once `pattern` appears in the output after `from` (an output offset). */
  async waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.output.slice(from));
      if (match) return from + match.index + match[0].length;
      if (this.process.exitCode !== null) throw new Error(`QEMU exited before ${pattern}; serial output:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms; serial output:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  type(line: string): void {
    this.process.stdin.write(`${line}\n`);
  }

  async waitExit(timeoutMs: number): Promise<number | null> {
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
    const result = await Promise.race([this.exited, timer]);
    if (result === 'timeout') throw new Error(`QEMU still running ${timeoutMs} ms later; serial output:\n${this.output}`);
    return result;
  }

  kill(): void {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
  }
}

function qemuArgs(image: GuestImagePaths, initrd: string, append: string, extra: string[] = []): string[] {
  return [
    '-machine', 'q35,accel=tcg', '-m', '256', '-nodefaults', '-no-user-config', '-display', 'none',
    '-serial', 'stdio', '-no-reboot',
    '-kernel', image.bzImage, '-initrd', initrd, '-append', append,
    // A NIC for eth0; user-mode networking restricted to the guest (no outside traffic).
    '-device', 'virtio-net-pci,netdev=n0', '-netdev', 'user,id=n0,restrict=on',
    ...extra,
  ];
}

function haveQemu(): boolean {
  return spawnSync('qemu-system-x86_64', ['--version']).status === 0;
}

describe('Linux guest image', () => {
  let image: GuestImagePaths;
  let coldRun: { output: string; seconds: number };

  beforeAll(() => {
    coldRun = runBuilder();
    image = guestImagePaths();
  }, 600_000);

  it('is cached: a second run is up to date and leaves current in place', () => {
    const warm = runBuilder();
    expect(warm.output).toMatch(/\[guest-image\] up to date: [0-9a-f]{16} /);
    expect(guestImagePaths().key).toBe(image.key);
    console.log(`guest image ${image.key}: first run ${coldRun.seconds.toFixed(1)} s, second ${warm.seconds.toFixed(2)} s`);
  });

  it('names the missing file and the build command when the cache is empty', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-gi-empty-'));
    try {
      expect(() => guestImagePaths(empty)).toThrow(BatonError);
      expect(() => guestImagePaths(empty)).toThrow(/guest-image\/current is missing; build it with .*build-guest-image\.sh/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
    expect(batonCacheDir({ BATON_CACHE_DIR: '/x' })).toBe('/x');
    expect(batonCacheDir({ XDG_CACHE_HOME: '/y' })).toBe('/y/baton');
  });

  it('has a bzImage with the HdrS setup header, boot protocol >= 2.12', () => {
    const header = Buffer.alloc(0x210);
    const fd = fs.openSync(image.bzImage, 'r');
    try {
      fs.readSync(fd, header, 0, header.length, 0);
    } finally {
      fs.closeSync(fd);
    }
    expect(header.toString('latin1', SETUP_HEADER.magicOffset, SETUP_HEADER.magicOffset + 4)).toBe(SETUP_HEADER.magic);
    expect(header.readUInt16LE(SETUP_HEADER.versionOffset)).toBeGreaterThanOrEqual(MIN_BOOT_PROTOCOL);
  });

  it('has a vmlinux ELF with a Xen PVH entry note', () => {
    const vmlinux = fs.readFileSync(image.vmlinux);
    expect(vmlinux.toString('latin1', 0, 4)).toBe(ELF.magic);
    expect(vmlinux[ELF.classOffset]).toBe(ELF.class64);
    const pvh = elfNotes(vmlinux).find((n) => n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
    expect(pvh).toBeDefined();
    expect(pvh!.desc.readUInt32LE(0)).toBeGreaterThan(0); // 32-bit physical entry address
  });

  it('has an initramfs (compressed and not) with /init, busybox and the virtio-net modules', () => {
    const list = (file: string, gzipped: boolean): string[] => {
      const script = gzipped ? `gzip -dc '${file}' | cpio -t --quiet` : `cpio -t --quiet < '${file}'`;
      const run = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 16 << 20 });
      expect(run.status).toBe(0);
      return run.stdout.split('\n').filter(Boolean);
    };
    const entries = list(image.initramfsUncompressed, false);
    expect(list(image.initramfs, true)).toEqual(entries);
    expect(entries).toEqual(expect.arrayContaining(['init', 'dev/console', 'bin/busybox', 'bin/sh', 'sbin/init', 'etc/inittab']));
    for (const module of ['virtio', 'virtio_ring', 'virtio_pci', 'failover', 'net_failover', 'virtio_net']) {
      expect(entries.some((e) => e.endsWith(`/${module}.ko`))).toBe(true);
    }
  });

  it("parses baton.ip and baton.gw with /init's own code", () => {
    const cmdline = 'console=ttyS0 quiet baton.ip=10.99.3.2/24 baton.gw=10.99.3.1';
    expect(guestShell(`cmdline_param baton.ip '${cmdline}'`)).toEqual({ status: 0, stdout: '10.99.3.2/24' });
    expect(guestShell(`cmdline_param baton.gw '${cmdline}'`)).toEqual({ status: 0, stdout: '10.99.3.1' });
    expect(guestShell(`cmdline_param baton.ip 'console=ttyS0 baton.ip=10.0.0.1/8 baton.ip=10.0.0.2/16'`).stdout).toBe('10.0.0.2/16');
    expect(guestShell(`cmdline_param baton.ip 'console=ttyS0 xbaton.ip=1.2.3.4/8 *'`).status).not.toBe(0);
    for (const good of ['10.99.3.2/24', '0.0.0.0/0', '255.255.255.255/32']) {
      expect(guestShell(`ipv4_cidr_valid '${good}'`).status).toBe(0);
    }
    for (const bad of ['10.99.3.2', '10.99.3/24', '10.99.3.256/24', '10.99.3.2/33', '10..3.2/24', '10.99.3.2./24', 'a.b.c.d/8', '10.99.3.2/']) {
      expect(guestShell(`ipv4_cidr_valid '${bad}'`).status).not.toBe(0);
    }
    expect(guestImageCmdline(image)).toMatch(/^console=ttyS0 earlyprintk=serial,ttyS0 noxsave nokaslr mitigations=off /);
  });

  describe('boots under QEMU TCG', () => {
    let guest: QemuGuest | undefined;
    let scratch: string | undefined;

    afterEach(() => {
      guest?.kill();
      guest = undefined;
      if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
      scratch = undefined;
    });

    it('to "baton-guest: ready" with eth0 configured from baton.ip; poweroff ends QEMU', async () => {
      if (!haveQemu()) return console.warn('qemu-system-x86_64 not installed: QEMU boot check skipped');
      const append = `${guestImageCmdline(image)} baton.ip=10.99.3.2/24 baton.gw=10.99.3.1`;
      const started = Date.now();
      guest = new QemuGuest(qemuArgs(image, image.initramfs, append));
      let at = await guest.waitFor(READY_LINE, BOOT_TIMEOUT_MS);
      console.log(`QEMU TCG: bzImage + initramfs.cpio.gz to "baton-guest: ready" in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      guest.type('ip addr show dev eth0');
      at = await guest.waitFor(/inet 10\.99\.3\.2\/24 .*eth0/, 30_000, at);
      guest.type('ip route');
      at = await guest.waitFor(/default via 10\.99\.3\.1 dev eth0/, 30_000, at);
      guest.type('poweroff');
      expect(await guest.waitExit(SHUTDOWN_TIMEOUT_MS)).toBe(0);
      expect(guest.output.slice(at)).toMatch(/reboot: Power down/);
    }, BOOT_TIMEOUT_MS + 2 * SHUTDOWN_TIMEOUT_MS);

    it('from the uncompressed initramfs; the shell respawns; Ctrl-Alt-Del powers off', async () => {
      if (!haveQemu()) return console.warn('qemu-system-x86_64 not installed: QEMU boot check skipped');
      scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-gi-'));
      const monitorPath = path.join(scratch, 'monitor.sock');
      guest = new QemuGuest(
        qemuArgs(image, image.initramfsUncompressed, guestImageCmdline(image), ['-monitor', `unix:${monitorPath},server=on,wait=off`]),
      );
      let at = await guest.waitFor(READY_LINE, BOOT_TIMEOUT_MS);
      at = await guest.waitFor(SHELL_PROMPT, 30_000, at);
      // When a session leader exits, Linux hangs up its serial tty and drops unread input:
      // wait for the new shell's prompt before typing again.
      guest.type('exit');
      at = await guest.waitFor(/built-in shell/, 30_000, at);
      at = await guest.waitFor(SHELL_PROMPT, 30_000, at);
      guest.type('echo respawned-$((6 * 7))');
      at = await guest.waitFor(/respawned-42/, 30_000, at);
      expect(guest.output.match(/baton-guest: ready/g)).toHaveLength(1);
      await sendMonitorCommand(monitorPath, 'sendkey ctrl-alt-delete');
      expect(await guest.waitExit(SHUTDOWN_TIMEOUT_MS)).toBe(0);
      expect(guest.output.slice(at)).toMatch(/reboot: Power down/);
    }, BOOT_TIMEOUT_MS + 3 * SHUTDOWN_TIMEOUT_MS);

    it('reboot resets the machine (QEMU -no-reboot exits)', async () => {
      if (!haveQemu()) return console.warn('qemu-system-x86_64 not installed: QEMU boot check skipped');
      guest = new QemuGuest(qemuArgs(image, image.initramfsUncompressed, guestImageCmdline(image)));
      const at = await guest.waitFor(READY_LINE, BOOT_TIMEOUT_MS);
      guest.type('reboot');
      expect(await guest.waitExit(SHUTDOWN_TIMEOUT_MS)).toBe(0);
      expect(guest.output.slice(at)).toMatch(/reboot: Restarting system/);
    }, BOOT_TIMEOUT_MS + SHUTDOWN_TIMEOUT_MS);
  });
});

/** Runs one HMP command on QEMU's human monitor socket. */
function sendMonitorCommand(socketPath: string, command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    let seen = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no (qemu) prompt on ${socketPath}`)));
    socket.on('data', (chunk) => {
      seen += chunk.toString('latin1');
      const prompts = seen.split('(qemu)').length - 1;
      if (prompts === 1) socket.write(`${command}\n`);
      // The prompt after the command means QEMU has run it.
      if (prompts >= 2) {
        socket.end();
        resolve();
      }
    });
    socket.on('error', reject);
  });
}

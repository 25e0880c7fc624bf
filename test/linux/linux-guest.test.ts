/**
 * The stock Debian guest over baton-hv's virtio-net, where the host can run Linux userspace
 * (the host probe decides; on kvm-pvm SYSCALL from guest ring 3 never reaches guest ring 0,
 * so these print why and return): the shell answers on the serial console, pings both ways,
 * a TCP transfer each way with matching sha256, the stock virtio_net module bound with its
 * offloads, and a graceful power-off.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { requireCapability } from '../../src/host/probe';
import { guestImageCmdline, guestImagePaths } from '../../src/guest-image';
import { GuestRun, NetLab } from '../net/net-helpers';

const skip = requireCapability('linuxUserspace');
const BOOT_TIMEOUT_MS = 15 * 60_000;

/** Types `command` on the guest's serial console and resolves with what follows until `until`. */
function shell(socketPath: string, command: string, until: RegExp, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let out = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no ${until} after "${command}"; got: ${out.slice(-500)}`)); }, timeoutMs);
    sock.on('connect', () => sock.write(`${command}\n`));
    sock.on('data', (d) => {
      out += d.toString('latin1');
      if (until.test(out)) { clearTimeout(timer); sock.destroy(); resolve(out); }
    });
    sock.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

describe('Debian guest on baton-hv (where Linux userspace can run)', () => {
  const lab = new NetLab('linux');
  let run: GuestRun | undefined;
  let consoleSocket = '';

  beforeAll(async () => {
    if (skip) return;
    lab.setUp();
    const image = guestImagePaths();
    const tap = lab.tapName(0);
    consoleSocket = path.join(lab.dir, 'console.sock');
    run = lab.startHv('linux', ['--kernel', image.vmlinux, '--initrd', image.initramfsUncompressed, '-m', '512',
      '--append', `${guestImageCmdline(image)} baton.ip=${lab.guestIp}/24`, '--serial-socket', consoleSocket,
      '--netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '--device', 'virtio-net-pci,netdev=n0,id=nic0']);
    await run.waitFor(/baton-guest: ready/, BOOT_TIMEOUT_MS);
    lab.adoptTap(tap);
  }, BOOT_TIMEOUT_MS + 60_000);

  afterAll(async () => {
    await lab.cleanup();
  });

  it('answers on the serial shell, binds virtio_net with offloads, pings both ways', async () => {
    if (skip) { console.warn(`Linux guest tests skipped: ${skip}`); return; }
    expect(await shell(consoleSocket, 'echo baton-$((6*7))', /baton-42/)).toMatch(/baton-42/);
    // The stock module drives the NIC, and the negotiated virtio features include checksum
    // offload both ways (bits 0 CSUM and 1 GUEST_CSUM of the device's feature string).
    const driver = await shell(consoleSocket, 'basename $(readlink /sys/class/net/eth0/device/driver); cat /sys/class/net/eth0/device/features; echo END', /END/);
    expect(driver).toMatch(/virtio_net/);
    expect(driver).toMatch(/\n11[01]+\r?\n/);
    expect(lab.ping(20, 0.05).received).toBe(20);
    expect(await shell(consoleSocket, `ping -c 3 ${lab.hostIp}; echo END`, /END/)).toMatch(/3 packets received/);
  }, 300_000);

  it('carries a TCP transfer each way with matching sha256', async () => {
    if (skip) { console.warn(`Linux guest tests skipped: ${skip}`); return; }
    const data = crypto.randomBytes(4 * 1024 * 1024);
    const sum = crypto.createHash('sha256').update(data).digest('hex');
    // host -> guest: busybox nc listens in the guest, the host sends from the namespace.
    const listening = shell(consoleSocket, 'nc -l -p 5001 > /tmp/in && sha256sum /tmp/in; echo END', /END/, 180_000);
    await new Promise((r) => setTimeout(r, 1000));
    execFileSync('ip', ['netns', 'exec', lab.netns, process.execPath, '-e',
      `const s=require('net').connect(5001,'${lab.guestIp}',()=>{process.stdin.pipe(s)});`], { input: data });
    expect(await listening).toContain(sum);
    // guest -> host: the host listens in the namespace, the guest sends the same file back.
    const receiver = spawnSync('ip', ['netns', 'exec', lab.netns, process.execPath, '-e', `
      const srv=require('net').createServer((c)=>{const h=require('crypto').createHash('sha256');c.on('data',(d)=>h.update(d));c.on('end',()=>{console.log(h.digest('hex'));srv.close();});}).listen(5002);
      setTimeout(()=>process.exit(1),170000);`], { encoding: 'utf8', timeout: 180_000, input: '' });
    void shell(consoleSocket, `nc ${lab.hostIp} 5002 < /tmp/in; echo END`, /END/, 180_000);
    expect(receiver.stdout.trim()).toBe(sum);
  }, 400_000);

  it('powers off gracefully on system_powerdown', async () => {
    if (skip) { console.warn(`Linux guest tests skipped: ${skip}`); return; }
    const qmp = await run!.qmp(false);
    await qmp.execute('system_powerdown');
    const ev = await qmp.waitEvent('SHUTDOWN', () => true, 120_000);
    expect(ev.data).toMatchObject({ guest: true });
  }, 180_000);
});

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BatonError } from '../../src/util/errors';
import { Domain } from '../../src/domain/types';
import { unitScale, parseMemoryKiB } from '../../src/domain/units';
import { BATON_XMLNS, normalizeUuid, parseDomainXml, serializeDomainXml, validateDomainName } from '../../src/domain/xml';
import { virtXmlValidate } from './helpers';

const REPO = path.resolve(__dirname, '../..');

/** Every feature of the subset at once. */
const FULL = `<?xml version="1.0"?>
<domain type='kvm'>
  <name>full-1</name>
  <uuid>0D7E2B6C91A44F3E8C556A1F9E3B2D80</uuid>
  <title>all features</title>
  <description>two
lines &amp; an ampersand</description>
  <metadata>
    <b:domain xmlns:b='${BATON_XMLNS}'>
      <b:migration network='netpass'/>
      <b:interface dev='tap1' network='local-fd'/>
    </b:domain>
  </metadata>
  <memory unit='GiB'>1</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='x86_64' machine='baton'>hvm</type>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/boot/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet baton.ip=10.99.0.9/24</cmdline>
  </os>
  <on_poweroff>preserve</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:AB:CD:EF'/>
      <target dev='tap0' managed='no'/>
      <model type='virtio'/>
      <driver name='vhost' queues='2'/>
    </interface>
    <interface type='ethernet'>
      <target dev='tap1'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
      <log file='/var/log/baton/full-1.serial.log' append='on'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
`;

const MINIMAL = `<domain type='kvm'><name>mini</name><memory>131072</memory><os><type>hvm</type><kernel>/k</kernel></os></domain>`;

function refusal(fn: () => unknown): BatonError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BatonError);
    return err as BatonError;
  }
  throw new Error('expected a BatonError, but nothing was thrown');
}

describe('parseDomainXml', () => {
  it('reads every supported element into plain data', () => {
    const d = parseDomainXml(FULL);
    expect(d).toEqual<Domain>({
      type: 'kvm',
      name: 'full-1',
      uuid: '0d7e2b6c-91a4-4f3e-8c55-6a1f9e3b2d80',
      title: 'all features',
      description: 'two\nlines & an ampersand',
      memoryKiB: 1024 * 1024,
      memoryBacking: { source: 'file', access: 'shared' },
      vcpus: 4,
      os: { arch: 'x86_64', machine: 'baton', kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', cmdline: 'console=ttyS0 quiet baton.ip=10.99.0.9/24' },
      onPoweroff: 'preserve',
      onReboot: 'destroy',
      onCrash: 'restart',
      interfaces: [
        { tapName: 'tap0', managed: false, mac: '52:54:00:ab:cd:ef', model: 'virtio', driver: { name: 'vhost', queues: 2 } },
        { tapName: 'tap1', managed: true, mac: expect.stringMatching(/^52:54:00(:[0-9a-f]{2}){3}$/), model: 'virtio', migrationPolicy: 'local-fd' },
      ],
      serial: { type: 'pty', port: 0, log: { file: '/var/log/baton/full-1.serial.log', append: true } },
      migrationPolicy: 'netpass',
    });
  });

  it('fills libvirt defaults: fresh v4 UUID, KiB, 1 vCPU, memfd shared, lifecycle actions, policy auto', () => {
    const a = parseDomainXml(MINIMAL);
    const b = parseDomainXml(MINIMAL);
    expect(a.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(a.uuid).not.toBe(b.uuid);
    expect(a).toMatchObject({ memoryKiB: 131072, vcpus: 1, memoryBacking: { source: 'memfd', access: 'shared' }, onPoweroff: 'destroy', onReboot: 'restart', onCrash: 'destroy', migrationPolicy: 'auto', interfaces: [] });
    expect(a.serial).toBeUndefined();
  });

  it('generates distinct 52:54:00 MACs when <mac> is missing', () => {
    const nics = Array.from({ length: 8 }, (_, i) => `<interface type='ethernet'><target dev='t${i}'/></interface>`).join('');
    const d = parseDomainXml(MINIMAL.replace('</os>', `</os><devices>${nics}</devices>`));
    expect(new Set(d.interfaces.map((n) => n.mac)).size).toBe(8);
    for (const nic of d.interfaces) expect(nic.mac).toMatch(/^52:54:00:/);
  });

  it('a lone <console type="pty"> implies the serial port, as in libvirt', () => {
    const d = parseDomainXml(MINIMAL.replace('</os>', "</os><devices><console type='pty'/></devices>"));
    expect(d.serial).toEqual({ type: 'pty', port: 0 });
  });

  it('resolves relative kernel/initrd paths against the XML file directory, and ~/ against the home directory', () => {
    const xml = MINIMAL.replace('<kernel>/k</kernel>', '<kernel>../guest/k.elf</kernel><initrd>~/img/initrd</initrd>');
    const d = parseDomainXml(xml, { baseDir: '/srv/baton/domains' });
    expect(d.os.kernel).toBe('/srv/baton/guest/k.elf');
    expect(d.os.initrd).toBe(path.join(os.homedir(), 'img/initrd'));
    const err = refusal(() => parseDomainXml(xml));
    expect(err.code).toBe('EXMLINVALID');
    expect(err.message).toContain('/domain/os/kernel');
    expect(err.message).toContain('relative path');
  });

  it('accepts a different prefix for the Baton namespace', () => {
    const xml = MINIMAL.replace('<memory>', `<metadata><zz:domain xmlns:zz='${BATON_XMLNS}'><zz:migration network='new-tap'/></zz:domain></metadata><memory>`);
    expect(parseDomainXml(xml).migrationPolicy).toBe('new-tap');
  });

  it.each([
    ['131072', undefined, 131072],
    ['128', 'M', 131072],
    ['128', 'MiB', 131072],
    ['128', 'mib', 131072],
    ['1', 'G', 1048576],
    ['1', 'GiB', 1048576],
    ['134217728', 'b', 131072],
    ['134217728', 'bytes', 131072],
    ['131072', 'k', 131072],
    ['131072', 'KiB', 131072],
    // Powers of 1000, rounded up to a whole MiB as libvirt's QEMU driver does.
    ['134217', 'KB', 131072],
    ['200', 'MB', 191 * 1024],
    ['1', 'GB', 954 * 1024],
    ['1', 'T', 1024 * 1024 * 1024],
    ['1', 'TiB', 1024 * 1024 * 1024],
    ['131073', 'KiB', 132096],
  ])('memory %s %s is %d KiB', (text, unit, kib) => {
    expect(parseMemoryKiB(text, unit, '/domain/memory')).toBe(kib);
  });

  it.each(['', 'x', 'KiBytes', 'Mi', 'MiBB', 'q', 'kk'])('refuses unit %j', (unit) => {
    expect(unitScale(unit)).toBeUndefined();
  });
});

describe('validateDomainName / normalizeUuid', () => {
  it.each(['demo', 'a', 'web-01', 'x.y_z+1', '9lives', 'A'.repeat(64)])('accepts %s', (name) => {
    expect(() => validateDomainName(name)).not.toThrow();
  });
  it.each(['', 'a/b', '../x', '.hidden', 'has space', 'tab\tname', 'a\\b', 'é', 'A'.repeat(65), '0d7e2b6c-91a4-4f3e-8c55-6a1f9e3b2d80'])('refuses %j', (name) => {
    expect(refusal(() => validateDomainName(name)).code).toBe('EDOMAINNAME');
  });
  it('normalizes UUIDs to lower-case 8-4-4-4-12', () => {
    expect(normalizeUuid('0D7E2B6C91A44F3E8C556A1F9E3B2D80')).toBe('0d7e2b6c-91a4-4f3e-8c55-6a1f9e3b2d80');
    expect(normalizeUuid('not-a-uuid')).toBeUndefined();
  });
});

describe('serializeDomainXml', () => {
  it('round-trips: parse(serialize(d)) equals d, and a second serialize is byte-identical', () => {
    for (const source of [FULL, MINIMAL]) {
      const first = serializeDomainXml(parseDomainXml(source));
      const again = parseDomainXml(first);
      expect(serializeDomainXml(again)).toBe(first);
      expect(again).toEqual(parseDomainXml(first));
    }
  });

  it('spells out defaults and the Baton metadata as libvirt dumpxml would', () => {
    const xml = serializeDomainXml(parseDomainXml(MINIMAL));
    expect(xml).toContain('<memory unit="KiB">131072</memory>');
    expect(xml).toContain('<currentMemory unit="KiB">131072</currentMemory>');
    expect(xml).toContain(`<baton:domain xmlns:baton="${BATON_XMLNS}">`);
    expect(xml).toContain('<baton:migration network="auto"/>');
    expect(xml).toContain('<vcpu placement="static">1</vcpu>');
    expect(xml.endsWith('</domain>\n')).toBe(true);
  });

  it('passes libvirt\'s own schema (virt-xml-validate) for the full example, the minimal one and the repo examples', () => {
    const sources: Array<[string, string, string | undefined]> = [
      ['full', FULL, undefined],
      ['minimal', MINIMAL, undefined],
      ['demo', fs.readFileSync(path.join(REPO, 'domains/demo.xml'), 'utf8'), path.join(REPO, 'domains')],
      ['debian', fs.readFileSync(path.join(REPO, 'domains/debian.xml'), 'utf8'), path.join(REPO, 'domains')],
    ];
    for (const [label, source, baseDir] of sources) {
      const xml = serializeDomainXml(parseDomainXml(source, { baseDir }));
      const result = virtXmlValidate(xml, label);
      if (!result) return;
      expect({ label, ...result }).toEqual({ label, ok: true, output: expect.stringContaining('validates') });
    }
  });

  it('the repo examples say what the quickstart expects', () => {
    const demo = parseDomainXml(fs.readFileSync(path.join(REPO, 'domains/demo.xml'), 'utf8'), { baseDir: path.join(REPO, 'domains') });
    expect(demo).toMatchObject({
      name: 'demo',
      memoryKiB: 128 * 1024,
      vcpus: 1,
      memoryBacking: { source: 'memfd', access: 'shared' },
      migrationPolicy: 'local-fd',
      os: { kernel: path.join(REPO, 'test/guest/build/testguest.elf'), cmdline: 'echo ip=10.99.0.2/24' },
      interfaces: [{ tapName: 'bt-demo0', managed: true, model: 'virtio' }],
      serial: { type: 'pty', port: 0 },
    });
    const debian = parseDomainXml(fs.readFileSync(path.join(REPO, 'domains/debian.xml'), 'utf8'), { baseDir: path.join(REPO, 'domains') });
    expect(debian.os.kernel).toBe(path.join(os.homedir(), '.cache/baton/guest-image/current/bzImage'));
    expect(debian.os.initrd).toBe(path.join(os.homedir(), '.cache/baton/guest-image/current/initramfs.cpio.gz'));
  });
});

describe('<cputune>', () => {
  /** MINIMAL with 4 vCPUs and this <cputune> content. */
  const withTune = (body: string): string => MINIMAL.replace('<os>', `<vcpu>4</vcpu><cputune>${body}</cputune><os>`);

  it('reads vcpupin and emulatorpin, sorted by vCPU, and round-trips them in canonical cpuset form', () => {
    const d = parseDomainXml(withTune("<vcpupin vcpu='3' cpuset='6,7'/><vcpupin vcpu='0' cpuset='0-3,^2'/><emulatorpin cpuset='8-9, 11'/>"));
    expect(d.cputune).toEqual({ vcpuPins: [{ vcpu: 0, cpus: [0, 1, 3] }, { vcpu: 3, cpus: [6, 7] }], emulatorPin: [8, 9, 11] });
    const xml = serializeDomainXml(d);
    expect(xml).toContain('<vcpu placement="static">4</vcpu>\n  <cputune>\n    <vcpupin vcpu="0" cpuset="0-1,3"/>\n    <vcpupin vcpu="3" cpuset="6-7"/>\n    <emulatorpin cpuset="8-9,11"/>\n  </cputune>\n  <os>');
    expect(parseDomainXml(xml)).toEqual(d);
    const result = virtXmlValidate(xml, 'cputune');
    if (result) expect(result).toEqual({ ok: true, output: expect.stringContaining('validates') });
  });

  it('takes emulatorpin alone, and an empty <cputune/> means no tuning', () => {
    expect(parseDomainXml(withTune("<emulatorpin cpuset='1'/>")).cputune).toEqual({ vcpuPins: [], emulatorPin: [1] });
    const d = parseDomainXml(withTune(''));
    expect(d.cputune).toBeUndefined();
    expect(serializeDomainXml(d)).not.toContain('cputune');
  });

  it.each([
    ["<vcpupin vcpu='4' cpuset='0'/>", 'EXMLINVALID', "/domain/cputune/vcpupin/@vcpu: vCPU 4 does not exist: the domain has 4 vCPUs (0 to 3); pin one of those or raise <vcpu>"],
    ["<vcpupin vcpu='one' cpuset='0'/>", 'EXMLINVALID', "/domain/cputune/vcpupin/@vcpu: 'one' is not a whole number"],
    ["<vcpupin cpuset='0'/>", 'EXMLINVALID', "/domain/cputune/vcpupin: attribute 'vcpu' is required"],
    ["<vcpupin vcpu='1' cpuset='0'/><vcpupin vcpu='1' cpuset='2'/>", 'EXMLINVALID', '/domain/cputune/vcpupin[2]/@vcpu: vCPU 1 is already pinned by vcpupin[1]'],
    ["<vcpupin vcpu='1'/>", 'EXMLINVALID', "/domain/cputune/vcpupin: attribute 'cpuset' is required"],
    ["<vcpupin vcpu='0' cpuset='1-'/>", 'EXMLINVALID', "/domain/cputune/vcpupin/@cpuset: cpuset '1-': '1-' is not a CPU number"],
    ["<vcpupin vcpu='0' cpuset='3-1'/>", 'EXMLINVALID', "cpuset '3-1': range '3-1' runs backwards"],
    ["<vcpupin vcpu='0' cpuset='a'/>", 'EXMLINVALID', "cpuset 'a': 'a' is not a CPU number"],
    ["<emulatorpin cpuset='^0'/>", 'EXMLINVALID', "/domain/cputune/emulatorpin/@cpuset: cpuset '^0': it names no CPU"],
    ["<emulatorpin cpuset='0'/><emulatorpin cpuset='1'/>", 'EXMLINVALID', '/domain/cputune/emulatorpin: appears 2 times'],
    ["<vcpupin vcpu='0' cpuset='0' extra='1'/>", 'EXMLUNSUPPORTED', "/domain/cputune/vcpupin/@extra: attribute 'extra' is not supported"],
    ['<shares>2048</shares>', 'EXMLUNSUPPORTED', '/domain/cputune/shares: <shares> is not supported by Baton: its <cputune> supports only <vcpupin> and <emulatorpin>'],
    ["<iothreadpin iothread='1' cpuset='0'/>", 'EXMLUNSUPPORTED', 'only <vcpupin> and <emulatorpin>'],
  ])('refuses %s', (body, code, message) => {
    const err = refusal(() => parseDomainXml(withTune(body)));
    expect({ code: err.code, message: err.message }).toEqual({ code, message: expect.stringContaining(message) });
  });

  it('counts vCPUs from <vcpu>, 1 when it is missing', () => {
    const xml = MINIMAL.replace('<os>', "<cputune><vcpupin vcpu='1' cpuset='0'/></cputune><os>");
    expect(refusal(() => parseDomainXml(xml)).message).toContain('the domain has 1 vCPU (vCPU 0)');
  });
});

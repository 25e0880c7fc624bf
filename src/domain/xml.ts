import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { Builder } from 'xml2js';
import { formatCpuset, parseCpuset } from '../util/cpuset';
import { BatonError } from '../util/errors';
import { DomainErrorCode, xmlError } from './errors';
import {
  BATON_MACHINE,
  CpuTune,
  Domain,
  DOMAIN_LIMITS,
  Interface,
  InterfaceDriver,
  LIFECYCLE_ACTIONS,
  LifecycleAction,
  MemoryBacking,
  MIGRATION_POLICIES,
  MigrationPolicy,
  OsBoot,
  Serial,
} from './types';
import { formatKiB, parseMemoryKiB } from './units';
import { ElementReader, parseXmlTree, XmlElement } from './xmltree';

/**
 * Domain XML ⇄ `Domain`: the libvirt-compatible subset Baton implements. Everything else is
 * refused with the element path and the reason (see xmltree.ts `done()`); nothing is dropped.
 *
 * File paths (kernel, initrd): absolute, or relative to the directory of the XML file
 * (`baseDir`), or `~/...` for the invoking user's home; the parsed Domain always holds the
 * absolute path, so the stored definition and `dumpxml` are plain libvirt XML. libvirt
 * itself wants absolute paths; the relative form lets the repo's `domains/*.xml` point at
 * files inside the checkout wherever it lives.
 */

/** Namespace of Baton's element under `<metadata>` (libvirt allows one element per namespace). */
export const BATON_XMLNS = 'https://baton.dev/xmlns/domain/1.0';
export const BATON_XMLNS_PREFIX = 'baton';

export interface ParseOptions {
  /** Directory that relative kernel/initrd paths are resolved against (the XML file's directory). */
  baseDir?: string;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
const UUID_PATTERN = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** Linux x86 COMMAND_LINE_SIZE is 2048 including the NUL. */
const MAX_CMDLINE_LENGTH = 2047;

/** Checks a domain name; the same rule guards every command that takes a name. */
export function validateDomainName(name: string, where = '/domain/name'): void {
  const refuse = (why: string): never => {
    throw new BatonError(DomainErrorCode.InvalidName, `${where}: ${why}`, { path: where, name });
  };
  if (name === '') refuse('domain name is empty');
  if (name.length > DOMAIN_LIMITS.maxNameLength) refuse(`domain name is ${name.length} characters long; at most ${DOMAIN_LIMITS.maxNameLength} are allowed`);
  if (name.includes('/') || name.includes('\\')) refuse(`domain name '${name}' contains a path separator; names are file names in the state directory`);
  if (UUID_PATTERN.test(name)) refuse(`domain name '${name}' looks like a UUID; commands accept names and UUIDs, so a name must not be one`);
  if (!NAME_PATTERN.test(name)) {
    refuse(`domain name '${name}' has characters Baton does not allow; use letters, digits, '.', '_', '+', '-', starting with a letter or digit`);
  }
}

/** Lower-case dashed form of a UUID, or undefined when `text` is not one. */
export function normalizeUuid(text: string): string | undefined {
  if (!UUID_PATTERN.test(text)) return undefined;
  const hex = text.replace(/-/g, '').toLowerCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random locally administered MAC in QEMU/libvirt's 52:54:00 range. */
export function generateMac(): string {
  const tail = [...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'));
  return ['52', '54', '00', ...tail].join(':');
}

function parseMac(text: string, where: string): string {
  if (!MAC_PATTERN.test(text)) throw xmlError(DomainErrorCode.XmlInvalid, where, `'${text}' is not a MAC address (write six hex pairs like 52:54:00:12:34:56)`);
  const mac = text.toLowerCase();
  const firstOctet = parseInt(mac.slice(0, 2), 16);
  if (firstOctet & 1) throw xmlError(DomainErrorCode.XmlInvalid, where, `'${text}' is a multicast address; a NIC needs a unicast MAC (first octet even)`);
  if (mac === '00:00:00:00:00:00') throw xmlError(DomainErrorCode.XmlInvalid, where, 'the all-zero MAC address is not usable');
  return mac;
}

function validateTapName(name: string, where: string): void {
  // Linux dev_valid_name(): non-empty, shorter than IFNAMSIZ, not . or .., no '/', ':' or whitespace.
  if (name === '' || name === '.' || name === '..' || name.length > DOMAIN_LIMITS.maxTapNameLength || /[/:\s]/.test(name)) {
    throw xmlError(DomainErrorCode.XmlInvalid, where, `'${name}' is not a valid network device name (1-${DOMAIN_LIMITS.maxTapNameLength} characters, no '/', ':' or spaces)`);
  }
}

function parsePositiveInt(text: string, where: string, min: number, max: number, what: string): number {
  if (!/^\d+$/.test(text)) throw xmlError(DomainErrorCode.XmlInvalid, where, `'${text}' is not a whole number`);
  const value = Number(text);
  if (value < min || value > max) throw xmlError(DomainErrorCode.XmlInvalid, where, `${what} ${value} is out of range; Baton accepts ${min} to ${max}`);
  return value;
}

function resolveHostPath(text: string, where: string, options: ParseOptions): string {
  if (text.includes('\0')) throw xmlError(DomainErrorCode.XmlInvalid, where, 'path contains a NUL character');
  if (text.startsWith('~/')) return path.join(os.homedir(), text.slice(2));
  if (path.isAbsolute(text)) return path.normalize(text);
  if (options.baseDir === undefined) {
    throw xmlError(DomainErrorCode.XmlInvalid, where, `'${text}' is a relative path; use an absolute path (relative paths are only accepted when defining from a file, relative to its directory)`);
  }
  return path.resolve(options.baseDir, text);
}

function parseLifecycle(domain: ElementReader, name: string, fallback: LifecycleAction): LifecycleAction {
  const element = domain.optionalChild(name);
  if (!element) return fallback;
  const value = element.requiredText();
  element.done();
  if (!(LIFECYCLE_ACTIONS as readonly string[]).includes(value)) {
    throw xmlError(DomainErrorCode.XmlUnsupported, element.path, `action '${value}' is not supported; use one of: ${LIFECYCLE_ACTIONS.join(', ')}`);
  }
  return value as LifecycleAction;
}

function parseMemory(domain: ElementReader): number {
  const memory = domain.requiredChild('memory');
  const kib = parseMemoryKiB(memory.requiredText(), memory.attr('unit'), memory.path);
  memory.done();
  if (kib < DOMAIN_LIMITS.minMemoryKiB || kib > DOMAIN_LIMITS.maxMemoryKiB) {
    throw xmlError(DomainErrorCode.XmlInvalid, memory.path, `${formatKiB(kib)} is out of range; Baton accepts ${formatKiB(DOMAIN_LIMITS.minMemoryKiB)} to ${formatKiB(DOMAIN_LIMITS.maxMemoryKiB)}`);
  }
  const current = domain.optionalChild('currentMemory');
  if (current) {
    const currentKiB = parseMemoryKiB(current.requiredText(), current.attr('unit'), current.path);
    current.done();
    if (currentKiB !== kib) {
      throw xmlError(DomainErrorCode.XmlUnsupported, current.path, `${formatKiB(currentKiB)} differs from <memory> (${formatKiB(kib)}); Baton has no balloon device, so currentMemory must equal memory (or be omitted)`);
    }
  }
  return kib;
}

function parseMemoryBacking(domain: ElementReader): MemoryBacking {
  const backing: MemoryBacking = { source: 'memfd', access: 'shared' };
  const element = domain.optionalChild('memoryBacking');
  if (!element) return backing;
  const source = element.optionalChild('source');
  if (source) {
    backing.source = source.enumAttr('type', ['memfd', 'file'] as const, 'memfd');
    source.done();
  }
  const access = element.optionalChild('access');
  if (access) {
    backing.access = access.enumAttr('mode', ['shared', 'private'] as const, 'shared');
    access.done();
  }
  element.done();
  return backing;
}

function parseVcpus(domain: ElementReader): number {
  const vcpu = domain.optionalChild('vcpu');
  if (!vcpu) return 1;
  vcpu.enumAttr('placement', ['static'] as const, 'static');
  const count = parsePositiveInt(vcpu.requiredText(), vcpu.path, DOMAIN_LIMITS.minVcpus, DOMAIN_LIMITS.maxVcpus, 'vCPU count');
  vcpu.done();
  return count;
}

/** CPU numbers of a `cpuset` attribute in libvirt syntax (e.g. `0-3,^2`). */
function parseCpusetAttr(element: ElementReader): number[] {
  const text = element.requiredAttr('cpuset');
  try {
    return parseCpuset(text);
  } catch (err) {
    throw xmlError(DomainErrorCode.XmlInvalid, `${element.path}/@cpuset`, `cpuset '${text}': ${(err as Error).message}; write host CPU numbers and ranges like '0-3,^2,6'`);
  }
}

const CPUTUNE_CHILDREN = ['vcpupin', 'emulatorpin'];

/** `<cputune>`: only pinning; host CPU numbers are checked at start, on the host that runs the domain. */
function parseCputune(domain: ElementReader, vcpus: number): CpuTune | undefined {
  const element = domain.optionalChild('cputune');
  if (!element) return undefined;
  // Say what is supported instead of done()'s generic refusal: the other children are real libvirt tuning knobs.
  const other = element.element.children.find((c) => c.uri === '' && !CPUTUNE_CHILDREN.includes(c.name));
  if (other) {
    throw xmlError(DomainErrorCode.XmlUnsupported, `${element.path}/${other.name}`, `<${other.name}> is not supported by Baton: its <cputune> supports only <vcpupin> and <emulatorpin>; remove <${other.name}>`);
  }
  const vcpuPins: CpuTune['vcpuPins'] = [];
  const pinnedBy = new Map<number, string>();
  for (const pin of element.children('vcpupin')) {
    const where = `${pin.path}/@vcpu`;
    const text = pin.requiredAttr('vcpu');
    if (!/^\d+$/.test(text)) throw xmlError(DomainErrorCode.XmlInvalid, where, `'${text}' is not a whole number`);
    const vcpu = Number(text);
    if (vcpu >= vcpus) {
      throw xmlError(DomainErrorCode.XmlInvalid, where, `vCPU ${vcpu} does not exist: the domain has ${vcpus === 1 ? '1 vCPU (vCPU 0)' : `${vcpus} vCPUs (0 to ${vcpus - 1})`}; pin one of those or raise <vcpu>`);
    }
    const earlier = pinnedBy.get(vcpu);
    if (earlier !== undefined) throw xmlError(DomainErrorCode.XmlInvalid, where, `vCPU ${vcpu} is already pinned by ${earlier}; pin each vCPU once`);
    pinnedBy.set(vcpu, pin.path.slice(element.path.length + 1));
    vcpuPins.push({ vcpu, cpus: parseCpusetAttr(pin) });
    pin.done();
  }
  const emulator = element.optionalChild('emulatorpin');
  const emulatorPin = emulator ? parseCpusetAttr(emulator) : undefined;
  emulator?.done();
  element.done();
  if (vcpuPins.length === 0 && emulatorPin === undefined) return undefined;
  vcpuPins.sort((a, b) => a.vcpu - b.vcpu);
  return emulatorPin ? { vcpuPins, emulatorPin } : { vcpuPins };
}

function parseOs(domain: ElementReader, options: ParseOptions): OsBoot {
  const osElement = domain.requiredChild('os');
  const type = osElement.requiredChild('type');
  const osType = type.requiredText();
  if (osType !== 'hvm') throw xmlError(DomainErrorCode.XmlUnsupported, type.path, `OS type '${osType}' is not supported; Baton runs full virtualization guests: <type>hvm</type>`);
  type.enumAttr('arch', ['x86_64'] as const, 'x86_64');
  type.enumAttr('machine', [BATON_MACHINE] as const, BATON_MACHINE);
  type.done();

  const kernelElement = osElement.optionalChild('kernel');
  if (!kernelElement) throw xmlError(DomainErrorCode.XmlInvalid, osElement.path, 'element <kernel> is required: Baton boots a kernel directly (bzImage or PVH ELF)');
  const kernel = resolveHostPath(kernelElement.requiredText(), kernelElement.path, options);
  kernelElement.done();

  const boot: OsBoot = { arch: 'x86_64', machine: BATON_MACHINE, kernel };
  const initrd = osElement.optionalChild('initrd');
  if (initrd) {
    boot.initrd = resolveHostPath(initrd.requiredText(), initrd.path, options);
    initrd.done();
  }
  const cmdline = osElement.optionalChild('cmdline');
  if (cmdline) {
    const text = cmdline.rawText();
    if (text.length > MAX_CMDLINE_LENGTH) throw xmlError(DomainErrorCode.XmlInvalid, cmdline.path, `kernel command line is ${text.length} characters; Linux takes at most ${MAX_CMDLINE_LENGTH}`);
    if (/[\r\n]/.test(text)) throw xmlError(DomainErrorCode.XmlInvalid, cmdline.path, 'kernel command line must be a single line');
    if (text !== '') boot.cmdline = text;
    cmdline.done();
  }
  osElement.done();
  return boot;
}

function parseInterface(element: ElementReader): Interface {
  const type = element.requiredAttr('type');
  if (type !== 'ethernet') {
    throw xmlError(DomainErrorCode.XmlUnsupported, `${element.path}/@type`, `interface type '${type}' is not supported; Baton NICs are type='ethernet' on a TAP device (<target dev='tap0'/>)`);
  }
  const target = element.optionalChild('target');
  if (!target) throw xmlError(DomainErrorCode.XmlInvalid, element.path, "element <target dev='...'/> is required: it names the host TAP device");
  const tapName = target.requiredAttr('dev');
  validateTapName(tapName, `${target.path}/@dev`);
  const managed = target.enumAttr('managed', ['yes', 'no'] as const, 'yes', DomainErrorCode.XmlInvalid) === 'yes';
  target.done();

  const macElement = element.optionalChild('mac');
  let mac = generateMac();
  if (macElement) {
    mac = parseMac(macElement.requiredAttr('address'), `${macElement.path}/@address`);
    macElement.done();
  }
  const model = element.optionalChild('model');
  if (model) {
    const modelType = model.requiredAttr('type');
    if (modelType !== 'virtio') throw xmlError(DomainErrorCode.XmlUnsupported, `${model.path}/@type`, `NIC model '${modelType}' is not supported; Baton emulates virtio-net only (model type='virtio')`);
    model.done();
  }
  const nic: Interface = { tapName, managed, mac, model: 'virtio' };
  const driverElement = element.optionalChild('driver');
  if (driverElement) {
    const driver: InterfaceDriver = {
      name: driverElement.enumAttr('name', ['vhost', 'qemu'] as const, 'qemu'),
      queues: 1,
    };
    const queues = driverElement.attr('queues');
    if (queues !== undefined) driver.queues = parsePositiveInt(queues, `${driverElement.path}/@queues`, 1, DOMAIN_LIMITS.maxQueues, 'queue count');
    driverElement.done();
    nic.driver = driver;
  }
  element.done();
  return nic;
}

function parseSerial(devices: ElementReader): Serial | undefined {
  const serials = devices.children('serial');
  const consoles = devices.children('console');
  if (serials.length > 1) throw xmlError(DomainErrorCode.XmlUnsupported, serials[1].path, 'Baton has one serial port (COM1); define at most one <serial>');
  if (consoles.length > 1) throw xmlError(DomainErrorCode.XmlUnsupported, consoles[1].path, 'Baton has one console (the serial port); define at most one <console>');
  if (serials.length === 0 && consoles.length === 0) return undefined;
  const serial: Serial = { type: 'pty', port: 0 };

  const checkType = (element: ElementReader): void => {
    const type = element.requiredAttr('type');
    if (type !== 'pty') throw xmlError(DomainErrorCode.XmlUnsupported, `${element.path}/@type`, `character device type '${type}' is not supported; use type='pty' (attach with 'baton vm console')`);
  };
  const checkPort = (target: ElementReader): void => {
    const port = target.attr('port');
    if (port !== undefined && port !== '0') throw xmlError(DomainErrorCode.XmlUnsupported, `${target.path}/@port`, `port ${port} does not exist; Baton has one serial port, port 0`);
  };

  if (serials[0]) {
    const element = serials[0];
    checkType(element);
    const target = element.optionalChild('target');
    if (target) {
      target.enumAttr('type', ['isa-serial'] as const, 'isa-serial');
      checkPort(target);
      // libvirt's live XML spells out the default model; it means the same UART.
      const model = target.optionalChild('model');
      if (model) {
        model.enumAttr('name', ['isa-serial'] as const, 'isa-serial');
        model.done();
      }
      target.done();
    }
    const log = element.optionalChild('log');
    if (log) {
      const file = log.requiredAttr('file');
      if (!path.isAbsolute(file)) throw xmlError(DomainErrorCode.XmlInvalid, `${log.path}/@file`, `'${file}' is not an absolute path`);
      const append = log.enumAttr('append', ['on', 'off'] as const, 'off', DomainErrorCode.XmlInvalid) === 'on';
      serial.log = { file: path.normalize(file), append };
      log.done();
    }
    element.done();
  }
  if (consoles[0]) {
    const element = consoles[0];
    checkType(element);
    const target = element.optionalChild('target');
    if (target) {
      target.enumAttr('type', ['serial'] as const, 'serial');
      checkPort(target);
      target.done();
    }
    if (element.element.children.some((c) => c.name === 'log')) {
      throw xmlError(DomainErrorCode.XmlUnsupported, `${element.path}/log`, 'put <log> on the <serial> element; the console is an alias of serial port 0');
    }
    element.done();
  }
  return serial;
}

function parsePolicy(value: string, where: string): MigrationPolicy {
  if (!(MIGRATION_POLICIES as readonly string[]).includes(value)) {
    throw xmlError(DomainErrorCode.XmlInvalid, where, `network migration policy '${value}' is unknown; use one of: ${MIGRATION_POLICIES.join(', ')}`);
  }
  return value as MigrationPolicy;
}

/** `ip netns` names are files in /run/netns: keep them to a safe file-name alphabet. */
const NETNS_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const IPV4_CIDR_PATTERN = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;

function parseNetns(value: string, where: string): string {
  if (!NETNS_PATTERN.test(value) || value === '.' || value === '..') {
    throw xmlError(DomainErrorCode.XmlInvalid, where, `'${value}' is not a usable network namespace name (1-64 letters, digits, '.', '_', '-', starting with a letter or digit)`);
  }
  return value;
}

function parseHostAddress(value: string, where: string): string {
  const match = IPV4_CIDR_PATTERN.exec(value);
  const octetsOk = match !== null && match.slice(1, 5).every((o) => Number(o) <= 255);
  const prefix = match ? Number(match[5]) : 0;
  if (!match || !octetsOk || prefix < 1 || prefix > 32) {
    throw xmlError(DomainErrorCode.XmlInvalid, where, `'${value}' is not an IPv4 address with prefix length (write it like 10.99.0.1/24)`);
  }
  return value;
}

/** What Baton's `<baton:interface dev=...>` says about one interface. */
interface InterfaceMetadata {
  policy?: MigrationPolicy;
  netns?: string;
  hostAddress?: string;
}

/** Reads Baton's own `<metadata>` element; foreign metadata is refused (Baton would not keep it). */
function parseMetadata(domain: ElementReader): { policy: MigrationPolicy; perInterface: Map<string, InterfaceMetadata> } {
  const result = { policy: 'auto' as MigrationPolicy, perInterface: new Map<string, InterfaceMetadata>() };
  const metadata = domain.optionalChild('metadata');
  if (!metadata) return result;
  const ours: XmlElement[] = [];
  for (const child of metadata.namespacedChildren()) {
    if (child.uri !== BATON_XMLNS) {
      throw xmlError(DomainErrorCode.XmlUnsupported, `${metadata.path}/${child.name}`, `metadata in namespace ${child.uri} is not supported; Baton keeps only its own (${BATON_XMLNS})`);
    }
    ours.push(child);
  }
  if (ours.length > 1) throw xmlError(DomainErrorCode.XmlInvalid, `${metadata.path}/${BATON_XMLNS_PREFIX}:${ours[1].name}`, `only one element in namespace ${BATON_XMLNS} is allowed under <metadata> (libvirt's rule)`);
  metadata.done();
  if (ours.length === 0) return result;

  const root = ours[0];
  const rootPath = `${metadata.path}/${BATON_XMLNS_PREFIX}:${root.name}`;
  if (root.name !== 'domain') throw xmlError(DomainErrorCode.XmlUnsupported, rootPath, `unknown Baton metadata element; expected <${BATON_XMLNS_PREFIX}:domain>`);
  if (root.attrs.size > 0) throw xmlError(DomainErrorCode.XmlUnsupported, `${rootPath}/@${[...root.attrs.keys()][0]}`, 'attribute is not supported on the Baton metadata element');
  if (root.text.trim() !== '') throw xmlError(DomainErrorCode.XmlInvalid, rootPath, 'unexpected text inside the Baton metadata element');
  let sawMigration = false;
  for (const child of root.children) {
    const childPath = `${rootPath}/${BATON_XMLNS_PREFIX}:${child.name}`;
    if (child.uri !== BATON_XMLNS) throw xmlError(DomainErrorCode.XmlUnsupported, childPath, `element must be in namespace ${BATON_XMLNS}`);
    const allowedAttrs = child.name === 'migration' ? ['network'] : child.name === 'interface' ? ['dev', 'network', 'netns', 'hostAddress'] : [];
    if (allowedAttrs.length === 0) throw xmlError(DomainErrorCode.XmlUnsupported, childPath, `unknown Baton metadata element <${BATON_XMLNS_PREFIX}:${child.name}>; expected migration or interface`);
    for (const [name, attr] of child.attrs) {
      if (!allowedAttrs.includes(name) || attr.uri !== '') throw xmlError(DomainErrorCode.XmlUnsupported, `${childPath}/@${name}`, `attribute is not supported; allowed: ${allowedAttrs.join(', ')}`);
    }
    if (child.children.length > 0 || child.text.trim() !== '') throw xmlError(DomainErrorCode.XmlInvalid, childPath, 'must be an empty element');
    const network = child.attrs.get('network')?.value;
    if (child.name === 'migration') {
      if (network === undefined) throw xmlError(DomainErrorCode.XmlInvalid, childPath, "attribute 'network' is required");
      if (sawMigration) throw xmlError(DomainErrorCode.XmlInvalid, childPath, 'appears more than once');
      sawMigration = true;
      result.policy = parsePolicy(network, `${childPath}/@network`);
    } else {
      const dev = child.attrs.get('dev')?.value;
      if (dev === undefined) throw xmlError(DomainErrorCode.XmlInvalid, childPath, "attribute 'dev' is required (the interface's <target dev>)");
      if (result.perInterface.has(dev)) throw xmlError(DomainErrorCode.XmlInvalid, childPath, `interface '${dev}' is described twice`);
      const entry: InterfaceMetadata = {};
      if (network !== undefined) entry.policy = parsePolicy(network, `${childPath}/@network`);
      const netns = child.attrs.get('netns')?.value;
      if (netns !== undefined) entry.netns = parseNetns(netns, `${childPath}/@netns`);
      const hostAddress = child.attrs.get('hostAddress')?.value;
      if (hostAddress !== undefined) entry.hostAddress = parseHostAddress(hostAddress, `${childPath}/@hostAddress`);
      if (Object.keys(entry).length === 0) throw xmlError(DomainErrorCode.XmlInvalid, childPath, "says nothing; give at least one of 'network', 'netns', 'hostAddress'");
      result.perInterface.set(dev, entry);
    }
  }
  return result;
}

/**
 * Parses libvirt domain XML into a Domain. Pure apart from UUID/MAC generation: host files
 * (kernel, initrd) are checked by the store at define time (`checkBootFiles`).
 */
export function parseDomainXml(xml: string, options: ParseOptions = {}): Domain {
  const tree = parseXmlTree(xml);
  if (tree.name !== 'domain' || tree.uri !== '') {
    throw xmlError(DomainErrorCode.XmlUnsupported, `/${tree.name}`, `root element is <${tree.name}>${tree.uri ? ` in namespace ${tree.uri}` : ''}; a domain definition starts with <domain type='kvm'>`);
  }
  const domain = new ElementReader(tree, '/domain');
  const type = domain.requiredAttr('type');
  if (type !== 'kvm') throw xmlError(DomainErrorCode.XmlUnsupported, '/domain/@type', `domain type '${type}' is not supported; Baton runs on KVM only: <domain type='kvm'>`);
  if (tree.attrs.has('id')) throw xmlError(DomainErrorCode.XmlUnsupported, '/domain/@id', "'id' is runtime state (from a running domain's XML); remove it from a definition");

  const nameElement = domain.requiredChild('name');
  const name = nameElement.requiredText();
  validateDomainName(name, nameElement.path);
  nameElement.done();

  let uuid: string = randomUUID();
  const uuidElement = domain.optionalChild('uuid');
  if (uuidElement) {
    const text = uuidElement.requiredText();
    const normalized = normalizeUuid(text);
    if (!normalized) throw xmlError(DomainErrorCode.XmlInvalid, uuidElement.path, `'${text}' is not a UUID (write 32 hex digits as 8-4-4-4-12)`);
    if (/^[0-]+$/.test(normalized)) throw xmlError(DomainErrorCode.XmlInvalid, uuidElement.path, 'the nil UUID is not a domain identity; omit <uuid> to have one generated');
    uuid = normalized;
    uuidElement.done();
  }

  const result: Domain = {
    type: 'kvm',
    name,
    uuid,
    memoryKiB: 0,
    memoryBacking: { source: 'memfd', access: 'shared' },
    vcpus: 1,
    os: { arch: 'x86_64', machine: BATON_MACHINE, kernel: '' },
    onPoweroff: 'destroy',
    onReboot: 'restart',
    onCrash: 'destroy',
    interfaces: [],
    migrationPolicy: 'auto',
  };
  const title = domain.optionalChild('title');
  if (title) {
    const text = title.rawText();
    if (/[\r\n]/.test(text)) throw xmlError(DomainErrorCode.XmlInvalid, title.path, 'title must be a single line');
    if (text !== '') result.title = text;
    title.done();
  }
  const description = domain.optionalChild('description');
  if (description) {
    const text = description.rawText();
    if (text !== '') result.description = text;
    description.done();
  }
  const metadata = parseMetadata(domain);
  result.migrationPolicy = metadata.policy;
  result.memoryKiB = parseMemory(domain);
  result.memoryBacking = parseMemoryBacking(domain);
  result.vcpus = parseVcpus(domain);
  const cputune = parseCputune(domain, result.vcpus);
  if (cputune) result.cputune = cputune;
  result.os = parseOs(domain, options);
  result.onPoweroff = parseLifecycle(domain, 'on_poweroff', 'destroy');
  result.onReboot = parseLifecycle(domain, 'on_reboot', 'restart');
  result.onCrash = parseLifecycle(domain, 'on_crash', 'destroy');

  const devices = domain.optionalChild('devices');
  if (devices) {
    const interfaces = devices.children('interface');
    if (interfaces.length > DOMAIN_LIMITS.maxInterfaces) throw xmlError(DomainErrorCode.XmlUnsupported, devices.path, `${interfaces.length} interfaces; Baton supports at most ${DOMAIN_LIMITS.maxInterfaces}`);
    result.interfaces = interfaces.map(parseInterface);
    const serial = parseSerial(devices);
    if (serial) result.serial = serial;
    devices.done();
  }
  domain.done();
  checkInterfaces(result, metadata.perInterface);
  return result;
}

/** Cross-interface rules: unique MACs and TAPs, policies only for interfaces that exist. */
function checkInterfaces(domain: Domain, perInterface: Map<string, InterfaceMetadata>): void {
  const macs = new Map<string, number>();
  const taps = new Map<string, number>();
  domain.interfaces.forEach((nic, index) => {
    const where = `/domain/devices/interface${domain.interfaces.length > 1 ? `[${index + 1}]` : ''}`;
    const macOwner = macs.get(nic.mac);
    if (macOwner !== undefined) {
      throw new BatonError(DomainErrorCode.DuplicateMac, `${where}/mac: address ${nic.mac} is already used by interface[${macOwner + 1}] of this domain; every NIC needs its own MAC`, { path: `${where}/mac`, mac: nic.mac });
    }
    macs.set(nic.mac, index);
    const tapOwner = taps.get(nic.tapName);
    if (tapOwner !== undefined) {
      throw new BatonError(DomainErrorCode.TapInUse, `${where}/target: TAP device '${nic.tapName}' is already used by interface[${tapOwner + 1}] of this domain`, { path: `${where}/target`, tap: nic.tapName });
    }
    taps.set(nic.tapName, index);
    const extra = perInterface.get(nic.tapName);
    if (extra?.policy !== undefined) nic.migrationPolicy = extra.policy;
    if (extra?.netns !== undefined || extra?.hostAddress !== undefined) {
      // Moving or addressing a TAP Baton did not create would change someone else's set-up.
      if (!nic.managed) {
        throw xmlError(DomainErrorCode.XmlInvalid, `/domain/metadata/${BATON_XMLNS_PREFIX}:domain/${BATON_XMLNS_PREFIX}:interface`, `interface '${nic.tapName}' has managed='no'; netns and hostAddress apply only to TAPs Baton manages (managed='yes')`);
      }
      if (extra.netns !== undefined) nic.netns = extra.netns;
      if (extra.hostAddress !== undefined) nic.hostAddress = extra.hostAddress;
    }
  });
  for (const dev of perInterface.keys()) {
    if (!taps.has(dev)) {
      throw xmlError(DomainErrorCode.XmlInvalid, `/domain/metadata/${BATON_XMLNS_PREFIX}:domain/${BATON_XMLNS_PREFIX}:interface`, `policy names interface '${dev}', but no <interface> has <target dev='${dev}'/>`);
    }
  }
}

type XmlNode = Record<string, unknown>;

/**
 * Serializes a Domain as libvirt XML in libvirt's element order, with defaults spelled out
 * (as `virsh dumpxml` does), so parse(serialize(d)) == d and the output is stable.
 */
export function serializeDomainXml(domain: Domain): string {
  const root: XmlNode = { $: { type: domain.type }, name: domain.name, uuid: domain.uuid };
  if (domain.title !== undefined) root.title = domain.title;
  if (domain.description !== undefined) root.description = domain.description;

  const batonChildren: XmlNode = { [`${BATON_XMLNS_PREFIX}:migration`]: { $: { network: domain.migrationPolicy } } };
  const described = domain.interfaces.filter((nic) => nic.migrationPolicy !== undefined || nic.netns !== undefined || nic.hostAddress !== undefined);
  if (described.length > 0) {
    batonChildren[`${BATON_XMLNS_PREFIX}:interface`] = described.map((nic) => {
      const attrs: Record<string, string> = { dev: nic.tapName };
      if (nic.migrationPolicy !== undefined) attrs.network = nic.migrationPolicy;
      if (nic.netns !== undefined) attrs.netns = nic.netns;
      if (nic.hostAddress !== undefined) attrs.hostAddress = nic.hostAddress;
      return { $: attrs };
    });
  }
  root.metadata = { [`${BATON_XMLNS_PREFIX}:domain`]: { $: { [`xmlns:${BATON_XMLNS_PREFIX}`]: BATON_XMLNS }, ...batonChildren } };

  root.memory = { $: { unit: 'KiB' }, _: String(domain.memoryKiB) };
  root.currentMemory = { $: { unit: 'KiB' }, _: String(domain.memoryKiB) };
  root.memoryBacking = { source: { $: { type: domain.memoryBacking.source } }, access: { $: { mode: domain.memoryBacking.access } } };
  root.vcpu = { $: { placement: 'static' }, _: String(domain.vcpus) };
  if (domain.cputune) {
    const cputune: XmlNode = {};
    if (domain.cputune.vcpuPins.length > 0) cputune.vcpupin = domain.cputune.vcpuPins.map((pin) => ({ $: { vcpu: String(pin.vcpu), cpuset: formatCpuset(pin.cpus) } }));
    if (domain.cputune.emulatorPin) cputune.emulatorpin = { $: { cpuset: formatCpuset(domain.cputune.emulatorPin) } };
    root.cputune = cputune;
  }

  const osNode: XmlNode = { type: { $: { arch: domain.os.arch, machine: domain.os.machine }, _: 'hvm' }, kernel: domain.os.kernel };
  if (domain.os.initrd !== undefined) osNode.initrd = domain.os.initrd;
  if (domain.os.cmdline !== undefined) osNode.cmdline = domain.os.cmdline;
  root.os = osNode;
  root.on_poweroff = domain.onPoweroff;
  root.on_reboot = domain.onReboot;
  root.on_crash = domain.onCrash;

  const devices: XmlNode = {};
  if (domain.interfaces.length > 0) {
    devices.interface = domain.interfaces.map((nic) => {
      const node: XmlNode = {
        $: { type: 'ethernet' },
        mac: { $: { address: nic.mac } },
        target: { $: { dev: nic.tapName, managed: nic.managed ? 'yes' : 'no' } },
        model: { $: { type: nic.model } },
      };
      if (nic.driver) node.driver = { $: { name: nic.driver.name, queues: String(nic.driver.queues) } };
      return node;
    });
  }
  if (domain.serial) {
    const serial: XmlNode = { $: { type: 'pty' } };
    if (domain.serial.log) serial.log = { $: { file: domain.serial.log.file, append: domain.serial.log.append ? 'on' : 'off' } };
    serial.target = { $: { type: 'isa-serial', port: String(domain.serial.port) } };
    devices.serial = serial;
    devices.console = { $: { type: 'pty' }, target: { $: { type: 'serial', port: String(domain.serial.port) } } };
  }
  if (Object.keys(devices).length > 0) root.devices = devices;

  const builder = new Builder({ rootName: 'domain', headless: true, renderOpts: { pretty: true, indent: '  ', newline: '\n' } });
  return builder.buildObject(root) + '\n';
}

import { Parser } from 'xml2js';
import { BatonError } from '../util/errors';
import { DomainErrorCode, xmlError } from './errors';

/**
 * A small, order-preserving element tree built from xml2js output, and a reader that
 * remembers which attributes and children the domain parser consumed. Whatever is left
 * unconsumed is refused by `done()`, so no element or attribute is ever dropped silently.
 */

export interface XmlElement {
  /** Local name (no prefix). */
  name: string;
  /** Namespace URI ('' for libvirt's own, un-namespaced elements). */
  uri: string;
  /** Attributes by local name; namespace declarations are left out. */
  attrs: Map<string, { value: string; uri: string }>;
  children: XmlElement[];
  /** Concatenated character data directly inside this element (whitespace-only runs dropped). */
  text: string;
}

/** xml2js node shape with `xmlns`, `explicitChildren` and `preserveChildrenOrder` on. */
interface RawNode {
  '#name': string;
  _?: string;
  $?: Record<string, { value: string; prefix: string; local: string; uri: string }>;
  $ns?: { uri: string; local: string };
  $$?: RawNode[];
}

const TEXT_NODE = '__text__';
/** Definitions are small; anything bigger than this is not a domain definition. */
const MAX_DOCUMENT_BYTES = 1024 * 1024;

function convert(raw: RawNode): XmlElement {
  const attrs = new Map<string, { value: string; uri: string }>();
  for (const attr of Object.values(raw.$ ?? {})) {
    // Namespace declarations are syntax, not data: the parser has already applied them.
    if (attr.prefix === 'xmlns' || (attr.prefix === '' && attr.local === 'xmlns')) continue;
    attrs.set(attr.local, { value: attr.value, uri: attr.uri });
  }
  const children: XmlElement[] = [];
  let text = '';
  for (const child of raw.$$ ?? []) {
    if (child['#name'] === TEXT_NODE) text += child._ ?? '';
    else children.push(convert(child));
  }
  return { name: raw.$ns?.local ?? raw['#name'], uri: raw.$ns?.uri ?? '', attrs, children, text };
}

/** Parses an XML document into an element tree; malformed input is an EXMLMALFORMED error. */
export function parseXmlTree(xml: string): XmlElement {
  if (Buffer.byteLength(xml) > MAX_DOCUMENT_BYTES) {
    throw new BatonError(DomainErrorCode.XmlMalformed, `document is larger than ${MAX_DOCUMENT_BYTES} bytes; a domain definition is a few KiB`);
  }
  if (xml.trim() === '') throw new BatonError(DomainErrorCode.XmlMalformed, 'document is empty; expected a <domain> element');
  const parser = new Parser({
    xmlns: true,
    explicitRoot: true,
    explicitChildren: true,
    preserveChildrenOrder: true,
    charsAsChildren: true,
    includeWhiteChars: false,
    async: false,
  });
  // xml2js reports the first root element and silently ignores anything after it (its sax
  // parser does not object to a second root), so watch sax's own state for a second root.
  const sax = (parser as unknown as { saxParser: { closedRoot?: boolean; onopentag: (node: unknown) => void } }).saxParser;
  const openTag = sax.onopentag;
  let extraRoot = false;
  sax.onopentag = (node: unknown) => {
    if (sax.closedRoot) extraRoot = true;
    openTag(node);
  };
  let result: Record<string, RawNode> | undefined;
  let failure: Error | undefined;
  // With async: false, xml2js calls back before parseString returns.
  parser.parseString(xml, (err: Error | null, parsed: Record<string, RawNode>) => {
    if (err) failure ??= err;
    else result ??= parsed;
  });
  if (!failure && extraRoot) failure = new Error('more than one root element; a domain file holds exactly one <domain>');
  if (failure) {
    const detail = failure.message.replace(/\s+/g, ' ').trim();
    throw new BatonError(DomainErrorCode.XmlMalformed, `not well-formed XML: ${detail}`);
  }
  const roots = Object.values(result ?? {});
  if (roots.length !== 1) throw new BatonError(DomainErrorCode.XmlMalformed, 'document has no root element');
  const root = roots[0];
  root['#name'] = Object.keys(result ?? {})[0];
  return convert(root);
}

/** Why Baton refuses well-known libvirt elements it does not implement (keyed by local name). */
const UNSUPPORTED_HINTS: Record<string, string> = {
  disk: 'Baton has no block devices; boot with <os><kernel> and <initrd> instead',
  filesystem: 'Baton has no shared filesystems; put files in the initrd',
  graphics: 'Baton has no display; use the serial console (<serial type="pty">)',
  video: 'Baton has no display; use the serial console (<serial type="pty">)',
  sound: 'Baton has no sound devices',
  input: 'Baton has no input devices besides the serial console',
  controller: 'Baton creates its one PCI host bridge itself; remove <controller>',
  hostdev: 'Baton cannot pass host devices through',
  channel: 'Baton has no guest agent channels',
  rng: 'Baton has no virtio-rng device',
  memballoon: 'Baton has no balloon device; remove <memballoon>',
  watchdog: 'Baton has no watchdog device',
  emulator: 'Baton is its own hypervisor (baton-hv); remove <emulator>',
  tpm: 'Baton has no TPM',
  smartcard: 'Baton has no smartcard device',
  redirdev: 'Baton has no USB redirection',
  parallel: 'Baton has no parallel port',
  features: 'Baton decides the machine features itself (ACPI, APIC); remove <features>',
  cpu: 'Baton uses its own documented CPU model; remove <cpu>',
  clock: 'Baton uses kvm-clock; remove <clock>',
  pm: 'Baton has no suspend-to-RAM/disk; remove <pm>',
  boot: 'Baton boots only a kernel directly (<os><kernel>), not from devices',
  loader: 'Baton has no firmware; boot a kernel directly with <os><kernel>',
  nvram: 'Baton has no firmware and no NVRAM',
  alias: 'device aliases are not supported; remove <alias>',
  address: 'Baton assigns PCI addresses itself; remove <address>',
  source: 'this is runtime state in libvirt\'s live XML; remove it from a definition',
  hugepages: 'Baton maps guest RAM from a memfd or file without huge pages',
  iothreads: 'Baton has no I/O threads',
  numatune: 'Baton has no NUMA tuning',
  resource: 'Baton has no resource partitions',
};

/** Tracks consumption of one element's attributes, children and text. */
export class ElementReader {
  private readonly usedAttrs = new Set<string>();
  private readonly usedChildren = new Set<XmlElement>();
  private textUsed = false;

  constructor(
    readonly element: XmlElement,
    /** XPath-like location used in every message, e.g. `/domain/devices/interface[2]/mac`. */
    readonly path: string,
  ) {}

  /** An optional attribute of this element. */
  attr(name: string): string | undefined {
    const found = this.element.attrs.get(name);
    if (found === undefined) return undefined;
    this.usedAttrs.add(name);
    if (found.uri !== '') throw xmlError(DomainErrorCode.XmlUnsupported, `${this.path}/@${name}`, `namespaced attribute (${found.uri}) is not supported here`);
    return found.value;
  }

  requiredAttr(name: string): string {
    const value = this.attr(name);
    if (value === undefined) throw xmlError(DomainErrorCode.XmlInvalid, this.path, `attribute '${name}' is required`);
    return value;
  }

  /** An attribute that must be one of `allowed` (default when absent). */
  enumAttr<T extends string>(name: string, allowed: readonly T[], fallback: T, code: DomainErrorCode = DomainErrorCode.XmlUnsupported): T {
    const value = this.attr(name);
    if (value === undefined) return fallback;
    if (!(allowed as readonly string[]).includes(value)) {
      throw xmlError(code, `${this.path}/@${name}`, `'${value}' is not supported; use one of: ${allowed.join(', ')}`);
    }
    return value as T;
  }

  /** Every child element with this local name (in document order), each with its own path. */
  children(name: string): ElementReader[] {
    const matching = this.element.children.filter((c) => c.name === name && c.uri === '');
    return matching.map((child, index) => {
      this.usedChildren.add(child);
      const suffix = matching.length > 1 ? `[${index + 1}]` : '';
      return new ElementReader(child, `${this.path}/${name}${suffix}`);
    });
  }

  /** At most one child with this name. */
  optionalChild(name: string): ElementReader | undefined {
    const found = this.children(name);
    if (found.length > 1) throw xmlError(DomainErrorCode.XmlInvalid, `${this.path}/${name}`, `appears ${found.length} times; at most one is allowed`);
    return found[0];
  }

  requiredChild(name: string): ElementReader {
    const child = this.optionalChild(name);
    if (!child) throw xmlError(DomainErrorCode.XmlInvalid, this.path, `element <${name}> is required`);
    return child;
  }

  /** Children in any namespace other than libvirt's (used for <metadata>). */
  namespacedChildren(): XmlElement[] {
    const found = this.element.children.filter((c) => c.uri !== '');
    for (const child of found) this.usedChildren.add(child);
    return found;
  }

  /** This element's character data, verbatim. */
  rawText(): string {
    this.textUsed = true;
    return this.element.text;
  }

  /** This element's character data with surrounding whitespace removed; must not be empty. */
  requiredText(): string {
    const text = this.rawText().trim();
    if (text === '') throw xmlError(DomainErrorCode.XmlInvalid, this.path, 'must not be empty');
    return text;
  }

  /** Refuses whatever this element has that the parser did not consume. */
  done(): void {
    for (const [name, attr] of this.element.attrs) {
      if (this.usedAttrs.has(name)) continue;
      const where = `${this.path}/@${name}`;
      if (attr.uri !== '') throw xmlError(DomainErrorCode.XmlUnsupported, where, `namespaced attribute (${attr.uri}) is not supported here`);
      throw xmlError(DomainErrorCode.XmlUnsupported, where, `attribute '${name}' is not supported by Baton on <${this.element.name}>; remove it`);
    }
    const counts = new Map<string, number>();
    for (const child of this.element.children) {
      const seen = (counts.get(child.name) ?? 0) + 1;
      counts.set(child.name, seen);
      if (this.usedChildren.has(child)) continue;
      const siblings = this.element.children.filter((c) => c.name === child.name).length;
      const where = `${this.path}/${child.name}${siblings > 1 ? `[${seen}]` : ''}`;
      if (child.uri !== '') throw xmlError(DomainErrorCode.XmlUnsupported, where, `element in namespace ${child.uri} is not allowed here`);
      const hint = UNSUPPORTED_HINTS[child.name];
      throw xmlError(DomainErrorCode.XmlUnsupported, where, `<${child.name}> is not supported by Baton${hint ? `: ${hint}` : '; remove it'}`);
    }
    if (!this.textUsed && this.element.text.trim() !== '') {
      throw xmlError(DomainErrorCode.XmlInvalid, this.path, `unexpected text '${this.element.text.trim().slice(0, 40)}' inside <${this.element.name}>`);
    }
  }
}

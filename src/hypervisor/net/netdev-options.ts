/**
 * QEMU's `-netdev tap,...` options (also `netdev_add` on the monitor), parsed and checked
 * before anything is opened: every conflict is an error that names the option.
 *
 * Deviations from QEMU 7.2, on purpose:
 * - `script` and `downscript` default to `no` (QEMU: /etc/qemu-ifup and /etc/qemu-ifdown):
 *   a hypervisor started by a manager should not run host scripts unless asked.
 * - `helper=` is refused (no qemu-bridge-helper here).
 * - `poll-us=` other than 0 is refused: it tunes vhost-net busy polling, which baton-hv
 *   does not have; QEMU ignores it silently without vhost.
 * - `incoming-fds=on` (Baton's): a netdev that opens nothing and waits for the TAP fds of an
 *   incoming local migration.
 */
import { BatonError } from '../../util/errors';

/** IFNAMSIZ - 1: the longest Linux interface name. */
export const MAX_IFNAME_LENGTH = 15;
/** Queue pairs we accept (each needs two virtqueues, a TAP fd and MSI-X vectors). */
export const MAX_TAP_QUEUES = 8;
const INT_MAX = 0x7fffffff;

export interface TapNetdevConfig {
  id: string;
  ifname?: string;
  /** fd= : a number (inherited) or a name (monitor getfd). */
  fd?: string;
  fds?: string[];
  queues: number;
  /** undefined: use the vnet header when the TAP can (QEMU's default). */
  vnetHdr?: boolean;
  script: string;
  downscript: string;
  /** Whether the vhost-net backend was asked for (vhost=, or implied by vhostfd(s)=/vhostforce=). */
  vhost: boolean;
  vhostforce: boolean;
  vhostfds?: string[];
  /** TUNSETSNDBUF bytes; QEMU's default when absent is INT_MAX. */
  sndbuf: number;
  incomingFds: boolean;
  /** Options the user actually gave (for messages and introspection). */
  given: string[];
}

export class NetdevOptionError extends BatonError {
  constructor(id: string | undefined, option: string, message: string) {
    super('ENETDEV', `netdev ${id ?? '(no id)'}: ${option}: ${message}`, { option, netdev: id });
  }
}

const KNOWN = new Set([
  'type', 'id', 'ifname', 'fd', 'fds', 'script', 'downscript', 'helper', 'br', 'queues', 'vnet_hdr', 'vhost', 'vhostfd',
  'vhostfds', 'vhostforce', 'sndbuf', 'poll-us', 'incoming-fds',
]);

type RawValue = string | number | boolean;

/** Splits `tap,id=n0,ifname=t0` (or `id=n0,...`) into key/value pairs; `,,` escapes a comma as QEMU does. */
export function splitNetdevString(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') { cur += ','; i++; continue; }
      parts.push(cur);
      cur = '';
    } else {
      cur += text[i];
    }
  }
  parts.push(cur);
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq < 0) {
      if (i === 0 && p !== '') { out.type = p; return; }
      throw new NetdevOptionError(out.id, p || '(empty)', 'expected key=value');
    }
    const key = p.slice(0, eq);
    if (key in out) throw new NetdevOptionError(out.id, key, 'given more than once');
    out[key] = p.slice(eq + 1);
  });
  return out;
}

/** Parses and validates tap netdev options given as a `-netdev` string or a QMP `netdev_add` object. */
export function parseNetdevTap(input: string | Record<string, RawValue>): TapNetdevConfig {
  const raw: Record<string, RawValue> = typeof input === 'string' ? splitNetdevString(input) : { ...input };
  const id = raw.id === undefined ? undefined : String(raw.id);
  const fail = (option: string, message: string): never => { throw new NetdevOptionError(id, option, message); };
  const has = (k: string) => raw[k] !== undefined;
  for (const k of Object.keys(raw)) if (!KNOWN.has(k)) fail(k, `unknown option for a tap netdev (known: ${[...KNOWN].filter((x) => x !== 'br').join(', ')})`);
  if (has('type') && raw.type !== 'tap') fail('type', `"${raw.type}" is not supported; baton-hv has tap netdevs only`);
  if (!id) fail('id', 'is required');
  if (!/^[A-Za-z][A-Za-z0-9_.-]{0,127}$/.test(id!)) fail('id', `"${id}" must start with a letter and hold only letters, digits, "_.-"`);

  const str = (k: string): string | undefined => (has(k) ? String(raw[k]) : undefined);
  const bool = (k: string): boolean | undefined => {
    if (!has(k)) return undefined;
    const v = raw[k];
    if (typeof v === 'boolean') return v;
    const s = String(v);
    if (['on', 'yes', 'true'].includes(s)) return true;
    if (['off', 'no', 'false'].includes(s)) return false;
    return fail(k, `"${s}" is not a boolean (use on or off)`);
  };
  const fdList = (k: string): string[] | undefined => {
    const s = str(k);
    if (s === undefined) return undefined;
    const list = s.split(':');
    if (list.some((x) => x === '')) fail(k, `"${s}" has an empty entry (expected fd numbers or names separated by ":")`);
    if (list.length > MAX_TAP_QUEUES) fail(k, `${list.length} fds given; at most ${MAX_TAP_QUEUES} queues are supported`);
    return list;
  };

  const ifname = str('ifname');
  const fd = str('fd');
  const fds = fdList('fds');
  const vhostfd = str('vhostfd');
  const vhostfds = fdList('vhostfds');
  const vnetHdr = bool('vnet_hdr');
  const incomingFds = bool('incoming-fds') ?? false;
  const vhostOpt = bool('vhost');
  const vhostforce = bool('vhostforce') ?? false;

  if (has('helper') || has('br')) fail(has('helper') ? 'helper' : 'br', 'is not supported by baton-hv (no qemu-bridge-helper); use ifname= or fd=');
  if (ifname !== undefined) {
    if (ifname.length === 0) fail('ifname', 'is empty');
    if (ifname.length > MAX_IFNAME_LENGTH) fail('ifname', `"${ifname}" is ${ifname.length} characters; Linux interface names have at most ${MAX_IFNAME_LENGTH} (IFNAMSIZ-1)`);
    if (/[\s/:]/.test(ifname) || ifname === '.' || ifname === '..') fail('ifname', `"${ifname}" is not a valid interface name (no spaces, "/" or ":")`);
  }

  let queues = 1;
  if (has('queues')) {
    const q = Number(raw.queues);
    if (!Number.isInteger(q) || q < 1 || q > MAX_TAP_QUEUES) fail('queues', `"${raw.queues}" must be an integer in 1..${MAX_TAP_QUEUES}`);
    queues = q;
  }

  let sndbuf = INT_MAX;
  if (has('sndbuf')) sndbuf = parseSize(String(raw.sndbuf), (m) => fail('sndbuf', m));

  if (has('poll-us')) {
    const p = Number(raw['poll-us']);
    if (!Number.isInteger(p) || p < 0) fail('poll-us', `"${raw['poll-us']}" must be a non-negative integer`);
    if (p !== 0) fail('poll-us', 'tunes vhost-net busy polling, which baton-hv does not implement; remove it (or use poll-us=0)');
  }

  const script = str('script') ?? 'no';
  const downscript = str('downscript') ?? 'no';
  if (script === '') fail('script', 'is empty (use script=no to run none)');
  if (downscript === '') fail('downscript', 'is empty (use downscript=no to run none)');

  // Where the fds come from: exactly one of fd=, fds=, ifname/auto-created, incoming-fds.
  if (incomingFds) {
    for (const k of ['fd', 'fds', 'helper']) if (has(k)) fail(k, 'cannot be combined with incoming-fds=on (the fds arrive with the migration)');
    for (const k of ['ifname', 'sndbuf', 'vnet_hdr']) if (has(k)) fail(k, 'is not allowed with incoming-fds=on: the incoming TAP keeps the settings it had; remove it');
    if (script !== 'no') fail('script', 'must be "no" with incoming-fds=on (the TAP is already set up)');
    if (downscript !== 'no') fail('downscript', 'must be "no" with incoming-fds=on (the TAP outlives this process)');
  } else if (fd !== undefined) {
    for (const k of ['ifname', 'script', 'downscript', 'vnet_hdr', 'queues', 'fds', 'vhostfds']) {
      if (has(k)) fail(k, 'is invalid with fd= (the fd is an already open TAP; ifname, scripts, vnet_hdr and queues come from it)');
    }
  } else if (fds !== undefined) {
    for (const k of ['ifname', 'script', 'downscript', 'vnet_hdr', 'vhostfd']) {
      if (has(k)) fail(k, 'is invalid with fds= (the fds are already open TAP queues)');
    }
    if (has('queues') && queues !== fds.length) fail('queues', `is ${queues} but fds= passes ${fds.length} fds; they must match (or leave queues out)`);
    queues = fds.length;
  }
  if (vhostfds && fds && vhostfds.length !== fds.length) fail('vhostfds', `passes ${vhostfds.length} fds but fds= passes ${fds.length}; they must match`);
  if (vhostfds && !fds) fail('vhostfds', 'needs fds= (one vhost fd per TAP queue fd)');
  if (vhostfd && fds) fail('vhostfd', 'is invalid with fds= (use vhostfds=)');

  // QEMU 7.2: vhost is on when asked for, or (when vhost= is absent) implied by vhostfd(s)= or vhostforce=on.
  const vhost = vhostOpt ?? (vhostfd !== undefined || vhostfds !== undefined || vhostforce);
  if (!vhost && (vhostfd !== undefined || vhostfds !== undefined)) fail(vhostfd !== undefined ? 'vhostfd' : 'vhostfds', 'is not valid without vhost (vhost=off was given)');

  return {
    id: id!, ifname, fd, fds: fd !== undefined ? [fd] : fds, queues, vnetHdr, script, downscript, vhost, vhostforce,
    vhostfds: vhostfd !== undefined ? [vhostfd] : vhostfds, sndbuf, incomingFds, given: Object.keys(raw),
  };
}

/** QEMU size syntax: a number with an optional k/M/G/T suffix (powers of 1024). */
function parseSize(text: string, fail: (m: string) => never): number {
  const m = /^(\d+)([kKmMgGtT]?)[bB]?$/.exec(text.trim());
  if (!m) return fail(`"${text}" is not a size (e.g. 1048576, 1024k, 4M)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()] as number;
  const n = Number(m[1]) * mult;
  if (n < 1 || n > INT_MAX) return fail(`${text} must be between 1 byte and ${INT_MAX} bytes`);
  return n;
}

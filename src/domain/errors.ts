import { BatonError } from '../util/errors';

/**
 * Stable error codes of the domain layer (matched by tests and printed by `--json`).
 * One code per kind of problem; the message names the element path or domain.
 */
export const DomainErrorCode = {
  /** The file is not well-formed XML. */
  XmlMalformed: 'EXMLMALFORMED',
  /** Well-formed, but uses something Baton does not implement (element, attribute, value). */
  XmlUnsupported: 'EXMLUNSUPPORTED',
  /** Supported element with an invalid or missing value (bad unit, bad MAC, out of range...). */
  XmlInvalid: 'EXMLINVALID',
  /** The domain name cannot be used (empty, too long, path characters, looks like a UUID). */
  InvalidName: 'EDOMAINNAME',
  /** The kernel or initrd named by the definition does not exist or is not a readable file. */
  BootFileMissing: 'EBOOTFILE',
  /** Two interfaces in one domain share a MAC address. */
  DuplicateMac: 'EDUPMAC',
  /** A name or UUID is already used by another defined domain. */
  DomainExists: 'EDOMAINEXISTS',
  /** A TAP device is already used by another defined domain (or twice in one). */
  TapInUse: 'ETAPINUSE',
  /** No defined domain has that name or UUID. */
  NoDomain: 'ENODOMAIN',
  /** The operation needs the domain shut off. */
  DomainActive: 'EDOMAINACTIVE',
  /** The store lock could not be taken in time. */
  StoreLocked: 'ESTORELOCKED',
  /** The XML file given to a command cannot be read. */
  InputUnreadable: 'EINPUT',
  /** A file in the store or run directory could not be read or written. */
  StoreIo: 'ESTOREIO',
} as const;
export type DomainErrorCode = (typeof DomainErrorCode)[keyof typeof DomainErrorCode];

/** An error about a place in a domain XML document; the message starts with the element path. */
export function xmlError(code: DomainErrorCode, path: string, why: string): BatonError {
  return new BatonError(code, `${path}: ${why}`, { path });
}

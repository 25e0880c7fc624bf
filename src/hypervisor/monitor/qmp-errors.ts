/**
 * QMP errors: `{"error": {"class": ..., "desc": ...}}` on the wire. The classes are QEMU's
 * (qapi/error.json, ErrorClass); the texts of the protocol-level errors are QEMU 7.2's,
 * word for word, because scripts written for QEMU match on them.
 */
import { BatonError } from '../../util/errors';

/** QEMU's ErrorClass values. Almost everything is GenericError, as in QEMU. */
export type QmpErrorClass =
  | 'GenericError'
  | 'CommandNotFound'
  | 'DeviceNotActive'
  | 'DeviceNotFound'
  | 'KVMMissingCap';

/**
 * A command failure that travels to the client as a QMP error. Handlers throw it (usually
 * through the helpers below); QmpClient rejects with it when the other side answers with an
 * error. `message` is the desc, so logs read naturally.
 */
export class QmpError extends BatonError {
  constructor(
    readonly errorClass: QmpErrorClass | string,
    readonly desc: string,
    /** The command that failed, when known (client side). */
    readonly command?: string,
  ) {
    super('QMP_ERROR', command ? `${command}: ${desc}` : desc, { class: errorClass, desc });
    this.name = 'QmpError';
  }

  /** The body of the wire error object: `{class, desc}` in QEMU's key order. */
  toWire(): { class: string; desc: string } {
    return { class: this.errorClass, desc: this.desc };
  }
}

export const genericError = (desc: string): QmpError => new QmpError('GenericError', desc);

/** The protocol's own error texts (QEMU's monitor/qmp.c, qapi/qmp-dispatch.c, qobject-input-visitor.c). */
export const QmpErrors = {
  notAnObject: () => genericError('QMP input must be a JSON object'),
  lacksExecute: () => genericError("QMP input lacks member 'execute'"),
  memberMustBeString: (member: string) => genericError(`QMP input member '${member}' must be a string`),
  argumentsMustBeObject: () => genericError("QMP input member 'arguments' must be an object"),
  memberUnexpected: (member: string) => genericError(`QMP input member '${member}' is unexpected`),
  executeClashesWithOob: () => genericError("QMP input member 'execute' clashes with 'exec-oob'"),
  expectingNegotiation: () =>
    new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'"),
  negotiationAlreadyComplete: () =>
    new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored'),
  commandNotFound: (command: string) => new QmpError('CommandNotFound', `The command ${command} has not been found`),
  oobNotSupported: (command: string) => genericError(`The command ${command} does not support OOB`),

  // Argument checking (QEMU's qobject input visitor).
  parameterMissing: (path: string) => genericError(`Parameter '${path}' is missing`),
  parameterUnexpected: (path: string) => genericError(`Parameter '${path}' is unexpected`),
  parameterType: (path: string, expected: string) =>
    genericError(`Invalid parameter type for '${path}', expected: ${expected}`),
  parameterValue: (path: string, expected: string) => genericError(`Parameter '${path}' expects ${expected}`),
  enumValue: (name: string, value: string) => genericError(`Parameter '${name}' does not accept value '${value}'`),

  // getfd / closefd (QEMU's monitor/fds.c).
  noFdSupplied: () => genericError('No file descriptor supplied via SCM_RIGHTS'),
  fdNameStartsWithDigit: () => genericError("Parameter 'fdname' expects a name not starting with a digit"),
  fdNotFound: (name: string) => genericError(`File descriptor named '${name}' not found`),
};

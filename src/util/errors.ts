/**
 * Base class for every error Baton raises on purpose. `code` is stable (tests and
 * `--json` output match on it); the message says what failed, on what, and what to do.
 */
export class BatonError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'BatonError';
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.details };
  }
}

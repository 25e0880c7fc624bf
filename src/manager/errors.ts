/**
 * Stable error codes of the manager (starting, stopping and talking to hypervisors).
 * The domain layer's codes (src/domain/errors.ts) are reused where they fit: ENODOMAIN,
 * EDOMAINACTIVE ("Domain is already active"), ETAPINUSE, EBOOTFILE.
 */
export const ManagerErrorCode = {
  /** The operation needs a running or paused domain (virsh: "domain is not running"). */
  NotActive: 'EDOMAINNOTACTIVE',
  /** The hypervisor process could not be started or died before its monitor answered. */
  StartFailed: 'ESTARTFAILED',
  /** The domain asks for something baton-hv cannot do (e.g. on_poweroff='restart'). */
  Unsupported: 'EUNSUPPORTED',
  /** Setting up the host side of a TAP (netns, address, link up) failed. */
  HostNetwork: 'EHOSTNET',
  /** The hypervisor's monitor did not answer, or refused a command. */
  Monitor: 'EMONITOR',
  /** A graceful shutdown did not finish within --timeout; the domain still runs. */
  ShutdownTimeout: 'ESHUTDOWNTIMEOUT',
  /** The hypervisor could not be stopped even with SIGKILL. */
  StopFailed: 'ESTOPFAILED',
  /** The domain has no console (no <serial>), or the console socket cannot be reached. */
  NoConsole: 'ENOCONSOLE',
  /** A managed='no' TAP that must already exist does not. */
  TapMissing: 'ENOTAP',
} as const;
export type ManagerErrorCode = (typeof ManagerErrorCode)[keyof typeof ManagerErrorCode];

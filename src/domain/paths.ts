import path from 'node:path';

/**
 * Where Baton keeps things. Read from the environment at call time (not at import), so
 * tests and scripts can point a process at temp directories.
 */
export interface BatonPaths {
  /** Domain definitions, one `<name>.xml` each (like /etc/libvirt/qemu). */
  stateDir: string;
  /** Runtime state, one `<name>.json` each, plus monitor/console sockets (like /run/libvirt/qemu). */
  runDir: string;
  /** Per-domain logs, including the guest's serial output (like /var/log/libvirt/qemu). */
  logDir: string;
}

export const DEFAULT_PATHS: BatonPaths = {
  stateDir: '/var/lib/baton',
  runDir: '/run/baton',
  logDir: '/var/log/baton',
};

export function batonPaths(env: NodeJS.ProcessEnv = process.env): BatonPaths {
  const pick = (value: string | undefined, fallback: string): string => path.resolve(value && value !== '' ? value : fallback);
  return {
    stateDir: pick(env.BATON_STATE_DIR, DEFAULT_PATHS.stateDir),
    runDir: pick(env.BATON_RUN_DIR, DEFAULT_PATHS.runDir),
    logDir: pick(env.BATON_LOG_DIR, DEFAULT_PATHS.logDir),
  };
}

/** File names derived from a (validated) domain name. */
export function domainFiles(paths: BatonPaths, name: string): {
  definition: string;
  runtime: string;
  monitorSocket: string;
  consoleSocket: string;
  log: string;
  serialLog: string;
} {
  return {
    definition: path.join(paths.stateDir, `${name}.xml`),
    runtime: path.join(paths.runDir, `${name}.json`),
    monitorSocket: path.join(paths.runDir, `${name}.monitor`),
    consoleSocket: path.join(paths.runDir, `${name}.console`),
    log: path.join(paths.logDir, `${name}.log`),
    serialLog: path.join(paths.logDir, `${name}.serial.log`),
  };
}

/**
 * Logging through winston, loaded lazily: a logger whose level filters a message out costs
 * a comparison, and winston itself (tens of milliseconds to load) is required only when the
 * first message that passes is written. baton-hv's start-up time depends on it.
 *
 * The level comes from BATON_LOG_LEVEL (error, warn, info, debug; default warn); CLI
 * commands raise it with --verbose. Messages go to stderr so stdout stays for output a
 * script may parse.
 */
import type winston from 'winston';

const LEVELS = { error: 0, warn: 1, info: 2, debug: 3 } as const;
export type LogLevel = keyof typeof LEVELS;

let threshold: number = LEVELS[(process.env.BATON_LOG_LEVEL as LogLevel) ?? 'warn'] ?? LEVELS.warn;
let root: winston.Logger | undefined;

function rootLogger(): winston.Logger {
  if (!root) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const w = require('winston') as typeof winston;
    root = w.createLogger({
      level: levelName(threshold),
      format: w.format.combine(
        w.format.timestamp(),
        w.format.printf(({ timestamp, level, message, component, ...rest }) => {
          const extra = Object.keys(rest).length ? ' ' + JSON.stringify(rest) : '';
          return `${timestamp} ${level} [${component ?? 'baton'}] ${message}${extra}`;
        }),
      ),
      transports: [new w.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug', 'verbose', 'silly'] })],
    });
  }
  return root;
}

function levelName(n: number): LogLevel {
  return (Object.keys(LEVELS) as LogLevel[]).find((k) => LEVELS[k] === n) ?? 'warn';
}

export interface Logger {
  error(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
  info(message: string, meta?: Record<string, unknown>): void;
  debug(message: string, meta?: Record<string, unknown>): void;
  isDebugEnabled(): boolean;
}

export function loggerFor(component: string): Logger {
  let child: winston.Logger | undefined;
  const write = (level: LogLevel) => (message: string, meta?: Record<string, unknown>) => {
    if (LEVELS[level] > threshold) return;
    child ??= rootLogger().child({ component });
    child.log(level, message, meta ?? {});
  };
  return {
    error: write('error'), warn: write('warn'), info: write('info'), debug: write('debug'),
    isDebugEnabled: () => threshold >= LEVELS.debug,
  };
}

export function setLogLevel(level: LogLevel): void {
  threshold = LEVELS[level];
  if (root) root.level = level;
}

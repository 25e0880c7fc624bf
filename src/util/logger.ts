import winston from 'winston';

/**
 * Winston loggers. The level comes from BATON_LOG_LEVEL (error, warn, info, debug);
 * CLI commands raise it with --verbose. Logs go to stderr so stdout stays for output
 * a script may parse.
 */
const level = process.env.BATON_LOG_LEVEL ?? 'warn';

export const rootLogger = winston.createLogger({
  level,
  format: winston.format.combine(
    winston.format.timestamp(),
    winston.format.printf(({ timestamp, level: lvl, message, component, ...rest }) => {
      const extra = Object.keys(rest).length ? ' ' + JSON.stringify(rest) : '';
      return `${timestamp} ${lvl} [${component ?? 'baton'}] ${message}${extra}`;
    }),
  ),
  transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug', 'verbose', 'silly'] })],
});

export function loggerFor(component: string): winston.Logger {
  return rootLogger.child({ component });
}

export function setLogLevel(newLevel: string): void {
  rootLogger.level = newLevel;
}

/** Adds a file transport (e.g. a domain's own log file) to a logger. */
export function addLogFile(logger: winston.Logger, filename: string): void {
  logger.add(new winston.transports.File({ filename }));
}

import { type Logger, pino } from 'pino';

export type { Logger };

/**
 * Structured logs with fixed field names (`tunnelId`, `connIndex`, `connectionId`, `pop`).
 * Secrets never go into a log line: callers pass ids, not credentials.
 */
export function createLogger(opts: { level?: string; name?: string; destination?: string } = {}): Logger {
  const level = opts.level ?? process.env.WARREN_LOGLEVEL ?? 'info';
  const dest = opts.destination
    ? pino.destination({ dest: opts.destination, sync: false })
    : pino.destination(2);
  return pino({ level, name: opts.name, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything; the default in tests and libraries. */
export const silentLogger: Logger = pino({ level: 'silent' });

/**
 * LOG_LEVEL, one setting for everything that talks to the user: the services' JSON logs write records at this level
 * and above, and the CLIs' progress (bars and lines on stderr) shows at `info` and `debug` only.
 */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The least severe level to write: LOG_LEVEL (any case), default `info`. A value that is no level is an error. */
export function logLevelFromEnv(env: NodeJS.ProcessEnv = process.env): LogLevel {
  const raw = env['LOG_LEVEL'];
  if (raw === undefined || raw.trim() === '') return 'info';
  const v = raw.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(v))
    throw new Error(`LOG_LEVEL: "${raw}" is not a level (expected one of: ${LOG_LEVELS.join(', ')})`);
  return v as LogLevel;
}

/** Whether a record at `level` is written when the threshold is `min`. */
export function logs(level: LogLevel, min: LogLevel): boolean {
  return LOG_LEVELS.indexOf(level) >= LOG_LEVELS.indexOf(min);
}

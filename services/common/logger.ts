/**
 * Structured JSON logs: one line per record ({time, level, service, context?, msg, ...fields}) on stdout, or into a
 * sink (tests). Also Nest's LoggerService, so framework messages come out in the same shape.
 */
import type { LoggerService } from '@nestjs/common';
import { logLevelFromEnv, logs } from '../../libs/fedbiot/src/light.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export interface LogRecord {
  readonly time: string;
  readonly level: LogLevel;
  readonly service: string;
  readonly msg: string;
  readonly [field: string]: unknown;
}

const NEST_STARTUP = new Set(['NestFactory', 'InstanceLoader', 'RoutesResolver', 'RouterExplorer', 'NestApplication']);

export class JsonLogger implements LoggerService {
  /** LOG_LEVEL: records below it are dropped (default info, so debug records are not written). */
  private readonly min = logLevelFromEnv();

  constructor(
    readonly service: string,
    private readonly sink: (r: LogRecord) => void = (r) => process.stdout.write(JSON.stringify(r) + '\n'),
  ) {}

  /** One record with extra fields (never put secrets in them). */
  write(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    if (!logs(level, this.min)) return;
    this.sink({ time: new Date().toISOString(), level, service: this.service, msg, ...fields });
  }

  info(msg: string, fields?: Record<string, unknown>): void {
    this.write('info', msg, fields);
  }

  // LoggerService: Nest passes (message, context?) and for errors (message, stack?, context?).
  log(message: unknown, context?: string): void {
    // Nest's start-up lines (modules loaded, routes mapped) are framework detail: debug, under LOG_LEVEL=debug.
    this.write(context && NEST_STARTUP.has(context) ? 'debug' : 'info', String(message), context ? { context } : {});
  }
  error(message: unknown, ...rest: unknown[]): void {
    this.write('error', String(message), rest.length ? { detail: rest.map(String) } : {});
  }
  warn(message: unknown, context?: unknown): void {
    this.write(
      'warn',
      String(message),
      typeof context === 'string'
        ? { context }
        : context && typeof context === 'object'
          ? (context as Record<string, unknown>)
          : {},
    );
  }
  debug(message: unknown, context?: string): void {
    this.write('debug', String(message), context ? { context } : {});
  }
  verbose(message: unknown, context?: string): void {
    this.write('debug', String(message), context ? { context } : {});
  }
}

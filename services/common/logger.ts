/**
 * Structured JSON logs: one line per record ({time, level, service, context?, msg, ...fields}) on stdout, or into a
 * sink (tests). Also Nest's LoggerService, so framework messages come out in the same shape.
 */
import type { LoggerService } from '@nestjs/common';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export interface LogRecord {
  readonly time: string;
  readonly level: LogLevel;
  readonly service: string;
  readonly msg: string;
  readonly [field: string]: unknown;
}

export class JsonLogger implements LoggerService {
  constructor(
    readonly service: string,
    private readonly sink: (r: LogRecord) => void = (r) => process.stdout.write(JSON.stringify(r) + '\n'),
  ) {}

  /** One record with extra fields (never put secrets in them). */
  write(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    this.sink({ time: new Date().toISOString(), level, service: this.service, msg, ...fields });
  }

  info(msg: string, fields?: Record<string, unknown>): void {
    this.write('info', msg, fields);
  }

  // LoggerService: Nest passes (message, context?) and for errors (message, stack?, context?).
  log(message: unknown, context?: string): void {
    this.write('info', String(message), context ? { context } : {});
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

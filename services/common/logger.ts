/**
 * The services' logs, written by pino: one JSON object per line ({level, time, service, context?, ...fields, msg})
 * on stdout, or with LOG_FORMAT=pretty one readable line per record (pino-pretty: time, level, [service context],
 * message, the fields); into a sink instead (tests). LOG_LEVEL (debug|info|warn|error, default info) drops the
 * records below it. Also Nest's LoggerService, so framework messages come out the same way; Nest's start-up lines
 * (modules loaded, routes mapped, microservice started) and its NATS transports' status lines are debug records.
 *
 * Why pino directly and not nestjs-pino (5.2.1, whose peer range does include Nest 12): nestjs-pino keeps one
 * pino-http instance, and with it one root logger, per process (module state in its rootLogger.js, built by whichever
 * app asks first). The tests and the messaging bench run several services in one process, each with its own
 * `service` name and sink; under nestjs-pino every later service would log through the first one's logger. Its
 * other part, per-request HTTP logging, is not wanted here: the HTTP routes are probes, scrapes and dashboard polls.
 */
import type { LoggerService } from '@nestjs/common';
import pino, { type DestinationStream, type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';
import { logLevelFromEnv } from '../../libs/fedbiot/src/light.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export interface LogRecord {
  readonly time: string;
  readonly level: LogLevel;
  readonly service: string;
  readonly msg: string;
  readonly [field: string]: unknown;
}

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** LOG_FORMAT (any case): `json` (default, for log collectors) or `pretty` (for a person at a terminal). */
export function logFormatFromEnv(env: NodeJS.ProcessEnv = process.env): LogFormat {
  const raw = env['LOG_FORMAT'];
  if (raw === undefined || raw.trim() === '') return 'json';
  const v = raw.trim().toLowerCase();
  if (!(LOG_FORMATS as readonly string[]).includes(v))
    throw new Error(`LOG_FORMAT: "${raw}" is not a format (expected one of: ${LOG_FORMATS.join(', ')})`);
  return v as LogFormat;
}

/** Nest's contexts whose log() lines are start-up detail (modules loaded, routes mapped, microservice started). */
const NEST_STARTUP = new Set([
  'NestFactory',
  'InstanceLoader',
  'RoutesResolver',
  'RouterExplorer',
  'NestApplication',
  'NestMicroservice',
]);

/** A framework line that is detail: start-up, or a Nest NATS transport's connection status (ours logs reconnects). */
function frameworkDetail(message: string, context: string | undefined): boolean {
  if (context === undefined) return false;
  return (
    NEST_STARTUP.has(context) ||
    ((context === 'ClientNats' || context === 'Server') && message.startsWith('NatsStatus:'))
  );
}

export interface LoggerOptions {
  /** Default: LOG_FORMAT. Ignored when a sink is given (a sink gets records). */
  readonly format?: LogFormat;
  /** Where the lines go. Default: stdout (file descriptor 1, written synchronously, so nothing is lost at exit). */
  readonly out?: DestinationStream;
}

/**
 * A readable line per record, `[12:01:02.345] INFO: [aggregator Context] msg {"round":1}` (the fields as JSON),
 * formatted synchronously on the calling thread (pino-pretty's formatter, not its transport stream), so a line is
 * out before the process can exit.
 */
export function prettyStream(
  out?: DestinationStream,
  colorize = out === undefined && process.stdout.isTTY,
): DestinationStream {
  const format = prettyFactory({
    colorize,
    translateTime: 'SYS:HH:MM:ss.l',
    singleLine: true,
    ignore: 'service,context',
    messageFormat: '[{service}{if context} {context}{end}] {msg}',
  });
  const dest = out ?? pino.destination({ dest: 1, sync: true });
  return { write: (line: string) => void dest.write(format(line)) };
}

export class JsonLogger implements LoggerService {
  /** The pino logger underneath (level from LOG_LEVEL, `service` bound to every record). */
  readonly pino: Logger;

  constructor(
    readonly service: string,
    sink?: (r: LogRecord) => void,
    opts: LoggerOptions = {},
  ) {
    const level = logLevelFromEnv();
    const format = sink ? 'json' : (opts.format ?? logFormatFromEnv());
    const json = format === 'json';
    const dest: DestinationStream = sink
      ? { write: (line: string) => sink(JSON.parse(line) as LogRecord) }
      : json
        ? (opts.out ?? pino.destination({ dest: 1, sync: true }))
        : prettyStream(opts.out);
    this.pino = pino(
      {
        level,
        base: { service },
        // JSON: ISO time and the level's name, the shape collectors and the tests read; pretty formats pino's own.
        ...(json
          ? { timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label: string) => ({ level: label }) } }
          : {}),
      },
      dest,
    );
  }

  /** One record with extra fields (never put secrets in them). */
  write(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    this.pino[level](fields, msg);
  }

  info(msg: string, fields?: Record<string, unknown>): void {
    this.write('info', msg, fields);
  }

  // LoggerService: Nest passes (message, context?) and for errors (message, stack?, context?).
  log(message: unknown, context?: string): void {
    // Nest's start-up and transport-status lines are framework detail: debug, shown under LOG_LEVEL=debug.
    const msg = String(message);
    this.write(frameworkDetail(msg, context) ? 'debug' : 'info', msg, context ? { context } : {});
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

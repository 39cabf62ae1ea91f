/**
 * The skeleton of the model owner's request-answering services (server-alignment, the evaluator): the options they
 * are started with, what their Nest module injects, the NATS transport their controller listens on, and readiness.
 */
import { ServerNats } from '@nestjs/microservices';
import type { JobSpec } from '../../libs/fedbiot/src/index.js';
import type { ServiceConnection } from './connection.js';
import type { LazyJobContext } from './job-context.js';
import type { JsonLogger, LogRecord } from './logger.js';
import { natsTransportOptions } from './nats-transport.js';
import type { JobStores } from './providers.js';

/** What such a service is started with. */
export interface RequestServiceOptions {
  readonly natsUrl: string;
  /**
   * Where the NATS credentials, TLS files and inbox prefix are read from (NATS_CREDS_FILE, NATS_USER +
   * NATS_PASSWORD_FILE, NATS_INBOX_PREFIX, ...: see libs/protocol credentials.ts). Default process.env; several
   * services in one process each get their own identity this way.
   */
  readonly natsEnv?: NodeJS.ProcessEnv;
  readonly spec: JobSpec;
  readonly logSink?: (r: LogRecord) => void;
}

/** What the service's Nest module injects. */
export interface RequestServiceDeps {
  readonly log: JsonLogger;
  readonly conn: ServiceConnection;
  readonly stores: JobStores;
  /** The job context (JOB_CONTEXT): opened by start(), freed by stop(). */
  readonly jobContext: LazyJobContext;
}

/**
 * The base class: the injected logger, connection, stores and job context; the transport; ready once started and
 * connected.
 */
export abstract class RequestService {
  readonly log: JsonLogger;
  /** Where the request handler (the service's controller) listens: Nest's NATS transport, queue group. */
  readonly transports: readonly ServerNats[];
  protected readonly conn: ServiceConnection;
  protected readonly stores: JobStores;
  protected readonly jobContext: LazyJobContext;
  /** Set by start() once the service can answer; cleared when it stops. */
  protected started = false;

  constructor(opts: RequestServiceOptions, deps: RequestServiceDeps) {
    this.log = deps.log;
    this.conn = deps.conn;
    this.stores = deps.stores;
    this.jobContext = deps.jobContext;
    this.transports = [new ServerNats(natsTransportOptions(opts.natsUrl, opts.natsEnv))];
  }

  ready(): boolean {
    // Not ready while NATS is down: the service can neither take nor deliver work.
    return this.started && this.conn.connected();
  }
}

/**
 * NestJS providers shared by the services' modules: the NATS connection, the job's stores and (for the model owner's
 * services) the job context, made by the module (custom providers with factories) and injected into controllers and
 * service classes, instead of each role opening its own inside start(). The module that opens the connection also
 * drains it when the app closes.
 */
import { Inject, Injectable, type FactoryProvider, type OnApplicationShutdown, type Provider } from '@nestjs/common';
import { ClientNats } from '@nestjs/microservices';
import type { NatsConnection } from '@nats-io/transport-node';
import { BlobStore, StateStore, WorkQueue, blobBucketName, stateBucketName } from '../../libs/protocol/src/index.js';
import type { JobSpec, LoadFederationOptions } from '../../libs/fedbiot/src/index.js';
import { connectService, type ServiceConnection } from './connection.js';
import { LazyJobContext } from './job-context.js';
import { JsonLogger, type LogRecord } from './logger.js';
import { NatsEventServer } from './nats-event-transport.js';
import { natsTransportOptions } from './nats-transport.js';

/** The service's NATS connection (a ServiceConnection: unlimited reconnects, connected() for readiness). */
export const NATS_CONNECTION = Symbol('NatsConnection');
/** The service's JsonLogger (the role's log, also given to the connection for its reconnect messages). */
export const SERVICE_LOG = Symbol('ServiceLog');
/** The job's stores (JobStores), bound to the injected connection. */
export const JOB_STORES = Symbol('JobStores');
/**
 * The job context of a model owner's service (LazyJobContext: the plan, the model and the service's data), loaded by
 * the role's start() on first use and freed by its stop().
 */
export const JOB_CONTEXT = Symbol('JobContext');
/** Nest's ClientNats for request/reply calls to other services' @MessagePattern handlers; closed when the app closes. */
export const NATS_CLIENT = Symbol('NatsClient');
/** The NatsEventServer (core NATS @EventPattern handlers) on the injected connection. */
export const NATS_EVENTS = Symbol('NatsEvents');

/**
 * Connects once, at module initialisation. `natsEnv` is where credentials, TLS files and the inbox prefix are read
 * from (libs/protocol credentials.ts); several services in one process each get their own identity this way.
 */
export function natsConnectionProvider(
  natsUrl: string,
  opts: { readonly natsEnv?: NodeJS.ProcessEnv },
): FactoryProvider<Promise<ServiceConnection>> {
  return {
    provide: NATS_CONNECTION,
    inject: [SERVICE_LOG],
    useFactory: (log: JsonLogger) => connectService(natsUrl, opts, log),
  };
}

/** Drains the injected connection when the app closes (after the roles stopped: RunningService.close). */
@Injectable()
export class NatsConnectionLifecycle implements OnApplicationShutdown {
  constructor(@Inject(NATS_CONNECTION) private readonly conn: ServiceConnection) {}

  async onApplicationShutdown(): Promise<void> {
    const nc = this.conn.nc;
    if (!nc.isClosed()) await nc.drain().catch(() => nc.close());
  }
}

/**
 * Nest's NATS client under the service's identity (`natsEnv`: credentials, TLS, inbox prefix). ClientNats connects on
 * its first call, with a connection of its own (Nest's transport owns it).
 */
export function natsClientProvider(
  natsUrl: string,
  opts: { readonly natsEnv?: NodeJS.ProcessEnv },
): FactoryProvider<ClientNats> {
  return {
    provide: NATS_CLIENT,
    useFactory: () => new ClientNats(natsTransportOptions(natsUrl, opts.natsEnv)),
  };
}

/** Closes the injected ClientNats when the app closes. */
@Injectable()
export class NatsClientLifecycle implements OnApplicationShutdown {
  constructor(@Inject(NATS_CLIENT) private readonly client: ClientNats) {}

  async onApplicationShutdown(): Promise<void> {
    await this.client.close();
  }
}

/**
 * A transport strategy for the module's @EventPattern handlers over core NATS, on the injected connection (the
 * role lists it in `transports`; the shared shell connects it as a microservice).
 */
export function natsEventsProvider(): FactoryProvider<NatsEventServer> {
  return {
    provide: NATS_EVENTS,
    inject: [NATS_CONNECTION, SERVICE_LOG],
    useFactory: (conn: ServiceConnection, log: JsonLogger) => new NatsEventServer(conn.nc, log),
  };
}

/**
 * The job's blob store, state store and work queue on one connection. Each is opened on first use and kept: a data
 * owner's trainer runs under a client identity that may not create the job's buckets, so they can only be opened
 * once the aggregator has created them, which may be long after the module started (and its HTTP probes answer).
 * A failed open is forgotten, so the next use tries again.
 */
export class JobStores {
  #blobs: Promise<BlobStore> | undefined;
  #state: Promise<StateStore> | undefined;
  #queue: Promise<WorkQueue> | undefined;

  constructor(
    readonly nc: NatsConnection,
    readonly jobId: string,
  ) {}

  blobs(): Promise<BlobStore> {
    return (this.#blobs ??= retryable(BlobStore.open(this.nc, { bucket: blobBucketName(this.jobId) }), () => {
      this.#blobs = undefined;
    }));
  }

  state(): Promise<StateStore> {
    return (this.#state ??= retryable(StateStore.open(this.nc, { bucket: stateBucketName(this.jobId) }), () => {
      this.#state = undefined;
    }));
  }

  /** The job's work queue; `clientId`: the per-client consumer of a data owner's replica. */
  queue(opts: { readonly clientId?: string; readonly log: JsonLogger }): Promise<WorkQueue> {
    return (this.#queue ??= retryable(
      WorkQueue.open(this.nc, {
        jobId: this.jobId,
        ...(opts.clientId === undefined ? {} : { clientId: opts.clientId }),
        logger: { warn: (m) => opts.log.warn(m) },
      }),
      () => {
        this.#queue = undefined;
      },
    ));
  }
}

/** A provider of the job's stores on the injected connection. */
export function jobStoresProvider(jobId: string): FactoryProvider<JobStores> {
  return {
    provide: JOB_STORES,
    inject: [NATS_CONNECTION],
    useFactory: (conn: ServiceConnection) => new JobStores(conn.nc, jobId),
  };
}

/**
 * A provider of the job context of a model owner's service (aggregator, server-alignment, evaluator), holding the
 * data `opts` names; loaded when the role opens it. The client-trainer has none: its context comes from the emulator
 * package it fetches once the job started (services/client-trainer/trainer.ts).
 */
export function jobContextProvider(spec: JobSpec, opts: LoadFederationOptions): Provider[] {
  return [{ provide: JOB_CONTEXT, useFactory: () => new LazyJobContext(spec, opts) }, JobContextLifecycle];
}

/**
 * Frees the job context's model when the app closes. The role's stop() has freed it already (a no-op then); this
 * one covers a start() that failed after loading it, where the shell closes the app without stopping the role.
 */
@Injectable()
export class JobContextLifecycle implements OnApplicationShutdown {
  constructor(@Inject(JOB_CONTEXT) private readonly ctx: LazyJobContext) {}

  async onApplicationShutdown(): Promise<void> {
    await this.ctx.close();
  }
}

function retryable<T>(p: Promise<T>, forget: () => void): Promise<T> {
  return p.catch((e: unknown) => {
    forget();
    throw e;
  });
}

/**
 * What every service module provides: its logger (SERVICE_LOG, named `name`), its NATS connection (NATS_CONNECTION,
 * drained when the app closes) and the job's stores on it (JOB_STORES).
 */
export function serviceProviders(
  name: string,
  opts: {
    readonly natsUrl: string;
    readonly natsEnv?: NodeJS.ProcessEnv;
    readonly logSink?: (r: LogRecord) => void;
  },
  jobId: string,
): Provider[] {
  return [
    { provide: SERVICE_LOG, useFactory: () => new JsonLogger(name, opts.logSink) },
    natsConnectionProvider(opts.natsUrl, opts),
    NatsConnectionLifecycle,
    jobStoresProvider(jobId),
  ];
}

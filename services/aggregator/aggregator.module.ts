/**
 * The aggregator as a Nest module: the NATS connection, logger, job stores and job context (JOB_CONTEXT, loaded by
 * the role's start(); services/common/providers.ts), Nest's NATS client for the alignment and evaluation calls, the
 * core NATS event transport, the metrics, the run folder writer and the round inbox are providers, injected into the
 * Aggregator service class (ROLE, read by the shared health and metrics controllers) and into AggregatorController
 * (made per job: its subjects carry the job id).
 * startAggregator serves it through the shared shell, which connects the event transport once start() resolved.
 */
import { Module, type DynamicModule } from '@nestjs/common';
import type { ClientNats } from '@nestjs/microservices';
import type { ServiceConnection } from '../common/connection.js';
import { ROLE, startServiceModule, type RunningService } from '../common/http.js';
import type { JsonLogger } from '../common/logger.js';
import type { NatsEventServer } from '../common/nats-event-transport.js';
import type { LazyJobContext } from '../common/job-context.js';
import {
  JOB_CONTEXT,
  JOB_STORES,
  NATS_CLIENT,
  NATS_CONNECTION,
  NATS_EVENTS,
  NatsClientLifecycle,
  SERVICE_LOG,
  jobContextProvider,
  natsClientProvider,
  natsEventsProvider,
  serviceProviders,
  type JobStores,
} from '../common/providers.js';
import { AGGREGATOR_DATA, Aggregator, AggregatorMetrics, type AggregatorOptions } from './aggregator.js';
import { aggregatorController } from './aggregator.controller.js';
import { AggregatorInbox } from './aggregator-inbox.js';
import { RunFolderWriter, runsDirFrom } from './run-folder.js';

export const AGGREGATOR_OPTIONS = Symbol('AggregatorOptions');

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class AggregatorModule {
  static register(opts: AggregatorOptions): DynamicModule {
    const jobId = opts.spec.job.id;
    // Checked here, before anything connects: the subjects, streams and buckets are all named after it.
    if (!jobId) throw new Error('job.id: required by the distributed runtime');
    return {
      module: AggregatorModule,
      controllers: [aggregatorController(jobId)],
      providers: [
        { provide: AGGREGATOR_OPTIONS, useValue: opts },
        ...serviceProviders('aggregator', opts, jobId),
        // Loaded by the role's start() (after the HTTP shell answers), freed by its stop().
        ...jobContextProvider(opts.spec, AGGREGATOR_DATA),
        natsClientProvider(opts.natsUrl, opts),
        NatsClientLifecycle,
        natsEventsProvider(),
        { provide: AggregatorMetrics, useFactory: () => new AggregatorMetrics() },
        {
          provide: RunFolderWriter,
          useFactory: () => new RunFolderWriter(opts.runsDir ?? runsDirFrom(process.env, opts.spec), opts.spec),
        },
        {
          provide: AggregatorInbox,
          inject: [NATS_EVENTS, SERVICE_LOG, AggregatorMetrics],
          useFactory: (events: NatsEventServer, log: JsonLogger, metrics: AggregatorMetrics) =>
            new AggregatorInbox(jobId, () => events.listening, log, metrics),
        },
        {
          provide: ROLE,
          inject: [
            AGGREGATOR_OPTIONS,
            SERVICE_LOG,
            NATS_CONNECTION,
            JOB_STORES,
            JOB_CONTEXT,
            AggregatorMetrics,
            RunFolderWriter,
            AggregatorInbox,
            NATS_EVENTS,
            NATS_CLIENT,
          ],
          useFactory: (
            o: AggregatorOptions,
            log: JsonLogger,
            conn: ServiceConnection,
            stores: JobStores,
            jobContext: LazyJobContext,
            metrics: AggregatorMetrics,
            folders: RunFolderWriter,
            inbox: AggregatorInbox,
            events: NatsEventServer,
            natsClient: ClientNats,
          ) => new Aggregator(o, { log, conn, stores, jobContext, metrics, folders, inbox, events, natsClient }),
        },
      ],
      exports: [
        ROLE,
        NATS_CONNECTION,
        JOB_STORES,
        JOB_CONTEXT,
        SERVICE_LOG,
        NATS_EVENTS,
        AggregatorInbox,
        AggregatorMetrics,
      ],
    };
  }
}

/** Starts the aggregator (HTTP shell, module, event transport) on `port` (0: any free port); the job runs at once. */
export function startAggregator(opts: AggregatorOptions, port: number): Promise<RunningService<Aggregator>> {
  return startServiceModule<Aggregator>(AggregatorModule.register(opts), port);
}

/**
 * server-alignment as a Nest module: the NATS connection, the logger, the job's stores and the job context
 * (JOB_CONTEXT, loaded by the role's start()) are custom providers (services/common/providers.ts) injected into the
 * ServerAlignment service class (ROLE); AlignmentController is made per job (its subject carries the job id) and
 * answers on Nest's NATS transport.
 */
import { Module, type DynamicModule } from '@nestjs/common';
import type { ServiceConnection } from '../common/connection.js';
import { ROLE, startServiceModule, type RunningService } from '../common/http.js';
import type { JsonLogger } from '../common/logger.js';
import type { LazyJobContext } from '../common/job-context.js';
import {
  JOB_CONTEXT,
  JOB_STORES,
  NATS_CONNECTION,
  SERVICE_LOG,
  jobContextProvider,
  serviceProviders,
  type JobStores,
} from '../common/providers.js';
import { ALIGNMENT_DATA, ServerAlignment, type AlignmentOptions } from './alignment.js';
import { alignmentController } from './alignment.controller.js';

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class ServerAlignmentModule {
  static register(opts: AlignmentOptions): DynamicModule {
    const jobId = opts.spec.job.id;
    // Checked here, before anything connects: the subjects, streams and buckets are all named after it.
    if (!jobId) throw new Error('job.id: required by the distributed runtime');
    return {
      module: ServerAlignmentModule,
      controllers: [alignmentController(jobId)],
      providers: [
        ...serviceProviders('server-alignment', opts, jobId),
        // Loaded by the role's start() (after the HTTP shell answers), freed by its stop().
        ...jobContextProvider(opts.spec, ALIGNMENT_DATA),
        {
          provide: ROLE,
          inject: [SERVICE_LOG, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT],
          useFactory: (log: JsonLogger, conn: ServiceConnection, stores: JobStores, jobContext: LazyJobContext) =>
            new ServerAlignment(opts, { log, conn, stores, jobContext }),
        },
      ],
      exports: [ROLE, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT, SERVICE_LOG],
    };
  }
}

/** Starts server-alignment (HTTP shell, module, NATS transport) on `port` (0: any free port). */
export function startAlignment(opts: AlignmentOptions, port: number): Promise<RunningService<ServerAlignment>> {
  return startServiceModule<ServerAlignment>(ServerAlignmentModule.register(opts), port);
}

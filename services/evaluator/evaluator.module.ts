/**
 * The evaluator as a Nest module: the NATS connection, the logger, the job's stores and the job context
 * (JOB_CONTEXT, loaded by the role's start()) are custom providers (services/common/providers.ts) injected into the
 * Evaluator service class (ROLE); EvaluatorController is made per job (its subject carries the job id) and answers on
 * Nest's NATS transport; the dashboard is an extra controller.
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
import { Evaluator, evaluatorData, type EvaluatorOptions } from './evaluator.js';
import { evaluatorController } from './evaluator.controller.js';
import { DashboardController } from './dashboard.js';

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class EvaluatorModule {
  static register(opts: EvaluatorOptions): DynamicModule {
    const jobId = opts.spec.job.id;
    // Checked here, before anything connects: the subjects, streams and buckets are all named after it.
    if (!jobId) throw new Error('job.id: required by the distributed runtime');
    return {
      module: EvaluatorModule,
      controllers: [evaluatorController(jobId)],
      providers: [
        ...serviceProviders('evaluator', opts, jobId),
        // Loaded by the role's start() (after the HTTP shell answers), freed by its stop().
        ...jobContextProvider(opts.spec, evaluatorData(opts.spec)),
        {
          provide: ROLE,
          inject: [SERVICE_LOG, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT],
          useFactory: (log: JsonLogger, conn: ServiceConnection, stores: JobStores, jobContext: LazyJobContext) =>
            new Evaluator(opts, { log, conn, stores, jobContext }),
        },
      ],
      exports: [ROLE, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT, SERVICE_LOG],
    };
  }
}

/** Starts the evaluator (HTTP shell, module, NATS transport) on `port` (0: any free port); `dashboard` adds /dashboard. */
export function startEvaluator(
  opts: EvaluatorOptions,
  port: number,
  { dashboard = false }: { readonly dashboard?: boolean } = {},
): Promise<RunningService<Evaluator>> {
  return startServiceModule<Evaluator>(EvaluatorModule.register(opts), port, dashboard ? [DashboardController] : []);
}

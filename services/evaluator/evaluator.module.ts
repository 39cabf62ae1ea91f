/**
 * The evaluator as a Nest module (requestServiceModule, services/common/request-service-module.ts): the NATS connection,
 * the logger, the job's stores and the job context (JOB_CONTEXT, loaded by the role's start()) are custom providers
 * injected into the Evaluator service class (ROLE); EvaluatorController is made per job (its subject carries the job id)
 * and answers on Nest's NATS transport; the dashboard is an extra controller.
 */
import { Module, type DynamicModule } from '@nestjs/common';
import { startServiceModule, type RunningService } from '../common/http.js';
import { requestServiceModule } from '../common/request-service-module.js';
import { Evaluator, evaluatorData, type EvaluatorOptions } from './evaluator.js';
import { evaluatorController } from './evaluator.controller.js';
import { DashboardController } from './dashboard.js';

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class EvaluatorModule {
  static register(opts: EvaluatorOptions): DynamicModule {
    return requestServiceModule({
      module: EvaluatorModule,
      name: 'evaluator',
      opts,
      data: evaluatorData(opts.spec),
      controller: evaluatorController,
      role: (o, deps) => new Evaluator(o, deps),
    });
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

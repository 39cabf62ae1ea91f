/**
 * The client-trainer as a Nest module: the NATS connection, the logger and the job's stores are custom providers
 * (services/common/providers.ts), injected into the ClientTrainer service class (provided as ROLE, which the shared
 * health and metrics controllers read) and into TrainerController. startTrainer serves it through the shared shell.
 */
import { Module, type DynamicModule } from '@nestjs/common';
import type { ServiceConnection } from '../common/connection.js';
import { ROLE, startServiceModule, type RunningService } from '../common/http.js';
import type { JsonLogger } from '../common/logger.js';
import { JOB_STORES, NATS_CONNECTION, SERVICE_LOG, serviceProviders, type JobStores } from '../common/providers.js';
import { ClientTrainer, trainerName, type TrainerOptions } from './trainer.js';
import { TrainerController } from './trainer.controller.js';

export const TRAINER_OPTIONS = Symbol('TrainerOptions');

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class ClientTrainerModule {
  static register(opts: TrainerOptions): DynamicModule {
    const jobId = opts.spec.job.id;
    // Checked here, before anything connects: the subjects, streams and buckets are all named after it.
    if (!jobId) throw new Error('job.id: required by the distributed runtime');
    return {
      module: ClientTrainerModule,
      controllers: [TrainerController],
      providers: [
        { provide: TRAINER_OPTIONS, useValue: opts },
        ...serviceProviders(trainerName(opts), opts, jobId),
        {
          provide: ROLE,
          inject: [TRAINER_OPTIONS, SERVICE_LOG, NATS_CONNECTION, JOB_STORES],
          useFactory: (o: TrainerOptions, log: JsonLogger, conn: ServiceConnection, stores: JobStores) =>
            new ClientTrainer(o, { log, conn, stores }),
        },
      ],
      exports: [ROLE, NATS_CONNECTION, JOB_STORES, SERVICE_LOG],
    };
  }
}

/** Starts a client-trainer replica (HTTP shell, module, work-queue transport) on `port` (0: any free port). */
export function startTrainer(opts: TrainerOptions, port: number): Promise<RunningService<ClientTrainer>> {
  return startServiceModule<ClientTrainer>(ClientTrainerModule.register(opts), port);
}

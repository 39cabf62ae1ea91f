/**
 * server-alignment as a Nest module (requestServiceModule, services/common/request-service-module.ts): the NATS connection,
 * the logger, the job's stores and the job context (JOB_CONTEXT, loaded by the role's start()) are custom providers
 * injected into the ServerAlignment service class (ROLE); AlignmentController is made per job (its subject carries the job id)
 * and answers on Nest's NATS transport.
 */
import { Module, type DynamicModule } from '@nestjs/common';
import { startServiceModule, type RunningService } from '../common/http.js';
import { requestServiceModule } from '../common/request-service-module.js';
import { ALIGNMENT_DATA, ServerAlignment, type AlignmentOptions } from './alignment.js';
import { alignmentController } from './alignment.controller.js';

@Module({})
// oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
export class ServerAlignmentModule {
  static register(opts: AlignmentOptions): DynamicModule {
    return requestServiceModule({
      module: ServerAlignmentModule,
      name: 'server-alignment',
      opts,
      data: ALIGNMENT_DATA,
      controller: alignmentController,
      role: (o, deps) => new ServerAlignment(o, deps),
    });
  }
}

/** Starts server-alignment (HTTP shell, module, NATS transport) on `port` (0: any free port). */
export function startAlignment(opts: AlignmentOptions, port: number): Promise<RunningService<ServerAlignment>> {
  return startServiceModule<ServerAlignment>(ServerAlignmentModule.register(opts), port);
}

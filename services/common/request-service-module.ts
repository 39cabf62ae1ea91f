/**
 * The Nest module of a request-answering service (server-alignment, the evaluator), which differ only in their role
 * class, their controller and the job data they load: the NATS connection, the logger and the job's stores
 * (serviceProviders), the job context with the service's data parts (JOB_CONTEXT, loaded by the role's start()
 * after the HTTP shell answers, freed by its stop()), and the role (ROLE) built from them.
 */
import type { DynamicModule, Type } from '@nestjs/common';
import type { LoadFederationOptions } from '../../libs/fedbiot/src/index.js';
import type { ServiceConnection } from './connection.js';
import { ROLE } from './http.js';
import type { LazyJobContext } from './job-context.js';
import type { JsonLogger } from './logger.js';
import {
  JOB_CONTEXT,
  JOB_STORES,
  NATS_CONNECTION,
  SERVICE_LOG,
  jobContextProvider,
  serviceProviders,
  type JobStores,
} from './providers.js';
import type { RequestServiceDeps, RequestServiceOptions } from './request-service.js';

export function requestServiceModule<O extends RequestServiceOptions>(def: {
  /** The @Module class the dynamic module belongs to. */
  readonly module: Type;
  /** The service's name in logs and metrics. */
  readonly name: string;
  readonly opts: O;
  /** The job data the service loads (its part of the federation). */
  readonly data: LoadFederationOptions;
  /** The controller answering the job's subject (made per job: the subject carries the job id). */
  readonly controller: (jobId: string) => Type;
  readonly role: (opts: O, deps: RequestServiceDeps) => unknown;
}): DynamicModule {
  const jobId = def.opts.spec.job.id;
  // Checked here, before anything connects: the subjects, streams and buckets are all named after it.
  if (!jobId) throw new Error('job.id: required by the distributed runtime');
  return {
    module: def.module,
    controllers: [def.controller(jobId)],
    providers: [
      ...serviceProviders(def.name, def.opts, jobId),
      ...jobContextProvider(def.opts.spec, def.data),
      {
        provide: ROLE,
        inject: [SERVICE_LOG, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT],
        useFactory: (log: JsonLogger, conn: ServiceConnection, stores: JobStores, jobContext: LazyJobContext) =>
          def.role(def.opts, { log, conn, stores, jobContext }),
      },
    ],
    exports: [ROLE, NATS_CONNECTION, JOB_STORES, JOB_CONTEXT, SERVICE_LOG],
  };
}

/** Service settings from the environment: NATS_URL, JOB_SPEC, HTTP_PORT (secrets are never read from or logged here). */
import { loadJobSpec, type JobSpec } from '../../libs/fedbiot/src/light.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

export interface ServiceEnv {
  readonly natsUrl: string;
  readonly jobSpecPath: string;
  /** 0: any free port. */
  readonly httpPort: number;
}

export function readEnv(env: NodeJS.ProcessEnv = process.env): ServiceEnv {
  const jobSpecPath = env['JOB_SPEC'];
  if (!jobSpecPath) throw new Error('JOB_SPEC: set it to the path of the job spec (YAML or JSON)');
  const port = Number(env['HTTP_PORT'] ?? '0');
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`HTTP_PORT: ${env['HTTP_PORT']} is not a port number`);
  return { natsUrl: env['NATS_URL'] ?? DEFAULT_NATS_URL, jobSpecPath, httpPort: port };
}

export async function readJobSpec(e: ServiceEnv): Promise<JobSpec> {
  return loadJobSpec(e.jobSpecPath);
}

/** connectTransport's options for a service given `natsEnv` (see the services' options), else none. */
export function natsEnvOption(opts: { readonly natsEnv?: NodeJS.ProcessEnv }): { env?: NodeJS.ProcessEnv } {
  return opts.natsEnv === undefined ? {} : { env: opts.natsEnv };
}

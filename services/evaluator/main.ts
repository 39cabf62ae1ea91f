/** The evaluator process: NATS_URL, JOB_SPEC, HTTP_PORT; dashboard at /dashboard. */
import { readEnv, readJobSpec } from '../common/env.js';
import { serviceProcess } from '../common/http.js';
import { startEvaluator } from './evaluator.module.js';

const env = readEnv();
serviceProcess(
  await startEvaluator({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }, env.httpPort, { dashboard: true }),
);

/** The evaluator process: NATS_URL, JOB_SPEC, HTTP_PORT; dashboard at /dashboard. */
import { readEnv, readJobSpec } from '../common/env.js';
import { serviceProcess } from '../common/http.js';
import { startProcess } from '../common/startup.js';
import { startEvaluator } from './evaluator.module.js';

await startProcess('evaluator', async () => {
  const env = readEnv();
  return serviceProcess(
    await startEvaluator({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }, env.httpPort, { dashboard: true }),
  );
});

/** The evaluator process: NATS_URL, JOB_SPEC, HTTP_PORT; dashboard at /dashboard. */
import { readEnv, readJobSpec } from '../common/env.js';
import { runServiceProcess } from '../common/http.js';
import { DashboardController } from './dashboard.js';
import { Evaluator } from './evaluator.js';

const env = readEnv();
await runServiceProcess(new Evaluator({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }), env.httpPort, [
  DashboardController,
]);

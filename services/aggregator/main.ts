/** The aggregator process: NATS_URL, JOB_SPEC, HTTP_PORT (see services/README.md). */
import { readEnv, readJobSpec } from '../common/env.js';
import { runServiceProcess } from '../common/http.js';
import { Aggregator } from './aggregator.js';

const env = readEnv();
const svc = await runServiceProcess(
  new Aggregator({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }),
  env.httpPort,
);
// The process stays up after the job (health / metrics) until it is told to stop.
await svc.role.done.catch(() => {
  process.exitCode = 1;
});

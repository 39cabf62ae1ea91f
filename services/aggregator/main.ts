/** The aggregator process: NATS_URL, JOB_SPEC, HTTP_PORT (see services/README.md). */
import { readEnv, readJobSpec } from '../common/env.js';
import { serviceProcess } from '../common/http.js';
import { startProcess } from '../common/startup.js';
import { startAggregator } from './aggregator.module.js';

const svc = await startProcess('aggregator', async () => {
  const env = readEnv();
  return serviceProcess(await startAggregator({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }, env.httpPort));
});
// The process stays up after the job (health / metrics) until told to stop, unless EXIT_WHEN_DONE=1.
const ok = await svc.role.done.then(
  () => true,
  () => false,
);
if (process.env['EXIT_WHEN_DONE'] === '1') {
  await svc.close();
  process.exit(ok ? 0 : 1);
} else if (!ok) process.exitCode = 1;

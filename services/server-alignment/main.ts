/** The server-alignment process: NATS_URL, JOB_SPEC, HTTP_PORT. */
import { readEnv, readJobSpec } from '../common/env.js';
import { serviceProcess } from '../common/http.js';
import { startProcess } from '../common/startup.js';
import { startAlignment } from './alignment.module.js';

await startProcess('server-alignment', async () => {
  const env = readEnv();
  return serviceProcess(await startAlignment({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }, env.httpPort));
});

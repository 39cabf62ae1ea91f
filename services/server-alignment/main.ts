/** The server-alignment process: NATS_URL, JOB_SPEC, HTTP_PORT. */
import { readEnv, readJobSpec } from '../common/env.js';
import { runServiceProcess } from '../common/http.js';
import { ServerAlignment } from './alignment.js';

const env = readEnv();
await runServiceProcess(new ServerAlignment({ natsUrl: env.natsUrl, spec: await readJobSpec(env) }), env.httpPort);

/** A client-trainer replica process: NATS_URL, JOB_SPEC, HTTP_PORT, REPLICA (name in logs). */
import { readEnv, readJobSpec } from '../common/env.js';
import { runServiceProcess } from '../common/http.js';
import { ClientTrainer } from './trainer.js';

const env = readEnv();
await runServiceProcess(
  new ClientTrainer({
    natsUrl: env.natsUrl,
    spec: await readJobSpec(env),
    replica: process.env['REPLICA'] ?? `client-trainer-${process.pid}`,
  }),
  env.httpPort,
);

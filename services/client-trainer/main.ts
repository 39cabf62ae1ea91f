/** A client-trainer replica process: NATS_URL, JOB_SPEC, HTTP_PORT, REPLICA (name in logs), ACK_WAIT_MS. */
import { readEnv, readJobSpec } from '../common/env.js';
import { runServiceProcess } from '../common/http.js';
import { ClientTrainer } from './trainer.js';

const env = readEnv();
const ackWait = process.env['ACK_WAIT_MS'];
if (ackWait !== undefined && !(Number.isInteger(Number(ackWait)) && Number(ackWait) >= 1000))
  throw new Error(`ACK_WAIT_MS: ${ackWait} is not an integer number of milliseconds >= 1000`);
await runServiceProcess(
  new ClientTrainer({
    natsUrl: env.natsUrl,
    spec: await readJobSpec(env),
    replica: process.env['REPLICA'] ?? `client-trainer-${process.pid}`,
    ...(ackWait !== undefined ? { ackWaitMs: Number(ackWait) } : {}),
  }),
  env.httpPort,
);

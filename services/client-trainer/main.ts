/**
 * A client-trainer replica process: NATS_URL, JOB_SPEC, HTTP_PORT, REPLICA (name in logs), ACK_WAIT_MS, and
 * CLIENT_ID for a data owner's replica that trains only that client (with that client's NATS identity: NATS_CREDS_FILE
 * or NATS_USER + NATS_PASSWORD_FILE, and NATS_INBOX_PREFIX). Without CLIENT_ID the replica is pooled.
 */
import { readEnv, readJobSpec } from '../common/env.js';
import { serviceProcess } from '../common/http.js';
import { startProcess } from '../common/startup.js';
import { startTrainer } from './trainer.module.js';

await startProcess('client-trainer', async () => {
  const env = readEnv();
  const ackWait = process.env['ACK_WAIT_MS'];
  if (ackWait !== undefined && !(Number.isInteger(Number(ackWait)) && Number(ackWait) >= 1000))
    throw new Error(`ACK_WAIT_MS: ${ackWait} is not an integer number of milliseconds >= 1000`);
  const clientId = process.env['CLIENT_ID'] || undefined;
  return serviceProcess(
    await startTrainer(
      {
        natsUrl: env.natsUrl,
        spec: await readJobSpec(env),
        replica: process.env['REPLICA'] ?? `client-trainer-${clientId ?? process.pid}`,
        ...(ackWait !== undefined ? { ackWaitMs: Number(ackWait) } : {}),
        ...(clientId !== undefined ? { clientId } : {}),
      },
      env.httpPort,
    ),
  );
});

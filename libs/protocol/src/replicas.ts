/**
 * How many JetStream servers keep a copy of each stream, KV bucket and object store this project creates. One
 * server (the local broker, CI) can only hold R1; a 3-node JetStream cluster holds R3, which survives the loss of
 * one node without losing a round (RAFT needs a majority of the replicas). Read from FEDBIOT_JS_REPLICAS (default 1),
 * so the same image runs on one server and on the production overlay's cluster; a creator may also pass `replicas`.
 * Existing streams are opened as they are: changing the setting does not re-replicate a running job's state.
 */
export const REPLICAS_ENV = 'FEDBIOT_JS_REPLICAS';

/** JetStream accepts 1 to 5 replicas. */
export const MAX_REPLICAS = 5;

/**
 * The replica count for new streams: `explicit` when given, else FEDBIOT_JS_REPLICAS, else 1.
 * @throws RangeError naming the setting for anything but an integer in 1..5
 */
export function jetStreamReplicas(explicit?: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = explicit ?? env[REPLICAS_ENV];
  if (raw === undefined || raw === '') return 1;
  const n = typeof raw === 'number' ? raw : Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > MAX_REPLICAS) {
    const where = explicit !== undefined ? 'replicas' : REPLICAS_ENV;
    throw new RangeError(`${where}=${String(raw)}: expected an integer from 1 to ${MAX_REPLICAS} (JetStream's limit)`);
  }
  return n;
}

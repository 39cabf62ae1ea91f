/**
 * Connecting to NATS with failures that say what is wrong (no server, or a server without JetStream),
 * and removing every JetStream resource of a job when it is over.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { TransportUnavailableError } from './errors.js';
import { blobBucketName, stateBucketName, taskStreamName } from './subjects.js';

/**
 * Connects and checks that JetStream answers. Throws TransportUnavailableError naming the servers.
 * `timeoutMs` (default 2000) bounds the connection attempt.
 */
export async function connectTransport(
  servers: string,
  opts: Omit<NodeConnectionOptions, 'servers'> & { timeoutMs?: number } = {},
): Promise<NatsConnection> {
  const { timeoutMs = 2000, ...rest } = opts;
  let nc: NatsConnection;
  try {
    nc = await connect({ servers, timeout: timeoutMs, ...rest });
  } catch (e) {
    throw new TransportUnavailableError(servers, `cannot connect (${(e as Error).message})`, { cause: e });
  }
  try {
    await (await jetstreamManager(nc)).getAccountInfo();
  } catch (e) {
    await nc.close();
    throw new TransportUnavailableError(
      servers,
      `JetStream is not available (start nats-server with -js): ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  return nc;
}

/**
 * Deletes the job's work-queue stream, state KV bucket and blob bucket (the streams behind them: `KV_<bucket>`,
 * `OBJ_<bucket>`). Missing ones are skipped. Returns the streams actually deleted.
 */
export async function deleteJobResources(nc: NatsConnection, jobId: string): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  const deleted: string[] = [];
  for (const stream of [taskStreamName(jobId), `KV_${stateBucketName(jobId)}`, `OBJ_${blobBucketName(jobId)}`]) {
    try {
      await jsm.streams.delete(stream);
      deleted.push(stream);
    } catch (e) {
      if (!(e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound)) throw e;
    }
  }
  return deleted;
}

/** Whether a JetStream stream of that name exists. */
export async function streamExists(nc: NatsConnection, stream: string): Promise<boolean> {
  try {
    await (await jetstreamManager(nc)).streams.info(stream);
    return true;
  } catch (e) {
    if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) return false;
    throw e;
  }
}

/**
 * Connecting to NATS with failures that say what is wrong (no server, or a server without JetStream),
 * and removing every JetStream resource of a job when it is over.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager, type StreamConfig } from '@nats-io/jetstream';
import { transportSecurityFromEnv, redactServers } from './credentials.js';
import { TransportUnavailableError } from './errors.js';
import {
  blobBucketName,
  stateBucketName,
  taskStreamName,
  updateBucketPrefix,
  ownerBucketName,
  packageBucketName,
} from './subjects.js';

/**
 * Connects and checks that JetStream answers. Throws TransportUnavailableError naming the servers (userinfo
 * redacted; the message never contains a password or seed). `timeoutMs` (default 2000) bounds the connection
 * attempt.
 *
 * Credentials and TLS: unless `opts` sets any of `authenticator`, `user`, `pass`, `token`, `tls`, they come from
 * `env` (default `process.env`) via `transportSecurityFromEnv`: NATS_CREDS_FILE, NATS_USER + NATS_PASSWORD /
 * NATS_PASSWORD_FILE, NATS_TLS_CA_FILE / NATS_TLS_CERT_FILE / NATS_TLS_KEY_FILE, NATS_INBOX_PREFIX. Pass
 * `env: {}` to connect anonymously regardless of the environment.
 */
export async function connectTransport(
  servers: string,
  opts: Omit<NodeConnectionOptions, 'servers'> & { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<NatsConnection> {
  const { timeoutMs = 2000, env = process.env, ...rest } = opts;
  const explicit = ['authenticator', 'user', 'pass', 'token', 'tls'].some(
    (k) => (rest as Record<string, unknown>)[k] !== undefined,
  );
  const shown = redactServers(servers);
  const security = explicit ? {} : transportSecurityFromEnv(env);
  let nc: NatsConnection;
  try {
    // A comma-separated list (NATS_URL=nats://n0:4222,nats://n1:4222,...) names every node of a cluster, so the
    // client can fail over even before the first server tells it about the others.
    const list = servers
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
    nc = await connect({ servers: list.length > 1 ? list : servers, timeout: timeoutMs, ...security, ...rest });
  } catch (e) {
    // No `cause`: a logger that serialises the cause chain would print whatever the client attached to it.
    throw new TransportUnavailableError(shown, `cannot connect (${redactServers((e as Error).message)})`);
  }
  try {
    await (await jetstreamManager(nc)).getAccountInfo();
  } catch (e) {
    await nc.close();
    throw new TransportUnavailableError(
      shown,
      `JetStream is not available (start nats-server with -js, and grant $JS.API.INFO): ${(e as Error).message}`,
    );
  }
  return nc;
}

/**
 * Deletes the job's work-queue stream, state KV bucket, blob bucket and per-client update buckets (the streams
 * behind them: `KV_<bucket>`, `OBJ_<bucket>`). Missing ones are skipped. Returns the streams actually deleted.
 */
export async function deleteJobResources(nc: NatsConnection, jobId: string): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  const deleted: string[] = [];
  const updates: string[] = [];
  // Update buckets are found by name: the client list is not known here, and the prefix is unique to the job.
  const prefix = `OBJ_${updateBucketPrefix(jobId)}`;
  for await (const name of jsm.streams.names()) if (name.startsWith(prefix)) updates.push(name);
  for (const stream of [
    taskStreamName(jobId),
    `KV_${stateBucketName(jobId)}`,
    `OBJ_${blobBucketName(jobId)}`,
    `OBJ_${packageBucketName(jobId)}`,
    `OBJ_${ownerBucketName(jobId)}`,
    ...updates,
  ]) {
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

/** The configuration of a JetStream stream, or null when it does not exist. */
export async function streamConfig(nc: NatsConnection, stream: string): Promise<StreamConfig | null> {
  try {
    return (await (await jetstreamManager(nc)).streams.info(stream)).config;
  } catch (e) {
    if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) return null;
    throw e;
  }
}

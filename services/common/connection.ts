/**
 * A service's NATS connection: reconnects forever (a broker outage of any length is ridden through, not fatal; the
 * client's default gives up after 10 attempts, about 20 s) and tracks whether it is connected right now, which
 * /health/ready reports. Core subscriptions are re-established by the client on reconnect; JetStream consumers
 * and watchers are the callers' to re-create (the trainer's work-queue loop does).
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { connectTransport } from '../../libs/protocol/src/index.js';
import { natsEnvOption } from './env.js';
import type { JsonLogger } from './logger.js';

export interface ServiceConnection {
  readonly nc: NatsConnection;
  /** False from a disconnect until the client reconnected. */
  connected(): boolean;
  /** Disconnects so far (a caller compares before and after a failed call to tell an outage from a bug). */
  disconnects(): number;
}

/** Pause between reconnect attempts (ms). */
const RECONNECT_WAIT_MS = 1000;

export async function connectService(
  natsUrl: string,
  opts: { readonly natsEnv?: NodeJS.ProcessEnv },
  log: JsonLogger,
): Promise<ServiceConnection> {
  const nc = await connectTransport(natsUrl, {
    ...natsEnvOption(opts),
    maxReconnectAttempts: -1,
    reconnectTimeWait: RECONNECT_WAIT_MS,
  });
  let connected = true;
  let since = 0;
  let disconnects = 0;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        if (connected) log.write('warn', 'NATS disconnected; reconnecting', {});
        if (connected) disconnects++;
        connected = false;
        since = Date.now();
      } else if (s.type === 'reconnect') {
        connected = true;
        log.info('NATS reconnected', { downMs: Date.now() - since });
      }
    }
  })().catch(() => {});
  return { nc, connected: () => connected && !nc.isClosed(), disconnects: () => disconnects };
}

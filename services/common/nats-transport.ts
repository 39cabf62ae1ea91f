/**
 * Nest's built-in NATS transport for the services' request/reply calls (the alignment call): `ServerNats` on the
 * answering side (a `@MessagePattern` handler in a controller), `ClientNats` on the asking side. Both connect with the
 * service's identity (credentials, TLS and inbox prefix from the same environment as its nats.js connection) and
 * reconnect forever, like services/common/connection.ts.
 */
import type { NodeConnectionOptions } from '@nats-io/transport-node';
import type { ClientProxy } from '@nestjs/microservices';
import { firstValueFrom, timeout } from 'rxjs';
import { transportSecurityFromEnv } from '../../libs/protocol/src/index.js';

/** Options of ServerNats / ClientNats for `natsUrl` under the identity in `natsEnv` (default process.env). */
export function natsTransportOptions(
  natsUrl: string,
  natsEnv: NodeJS.ProcessEnv = process.env,
): NodeConnectionOptions & { servers: string } {
  return { servers: natsUrl, ...transportSecurityFromEnv(natsEnv), maxReconnectAttempts: -1, reconnectTimeWait: 1000 };
}

/**
 * `client.send(pattern, data)` awaited with a deadline. Services start in any order and ClientNats publishes (it
 * does not `request`), so a call with no server listening comes back as Nest's EmptyResponseException (the NATS
 * "no responders" status): retried every 250 ms until `timeoutMs` runs out. Other failures propagate.
 */
export async function sendWithRetry(
  client: Pick<ClientProxy, 'send'>,
  pattern: string,
  data: unknown,
  timeoutMs: number,
): Promise<unknown> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await firstValueFrom(client.send(pattern, data).pipe(timeout(Math.max(1, until - Date.now()))));
    } catch (e) {
      const noResponders = String((e as Error)?.message).startsWith('Empty response');
      if (!noResponders || Date.now() + 250 > until)
        throw new Error(`request on ${pattern} failed: ${(e as Error)?.message ?? String(e)}`, { cause: e });
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Request/reply between the services (aggregator -> server-alignment, aggregator -> evaluator): services start in
 * any order, so a request waits for a responder; the reply is validated like every protocol message.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { ClientProxy } from '@nestjs/microservices';
import type { z } from 'zod';
import { decodeMessage, encodeMessage, type Expected } from '../../libs/protocol/src/index.js';
import { sendWithRetry } from './nats-transport.js';

/**
 * A request that waits for a responder: "no responders" is retried until `timeoutMs` runs out. Other failures
 * (a timeout while a responder works) propagate.
 */
export async function requestWithRetry(
  nc: NatsConnection,
  subject: string,
  body: Uint8Array,
  timeoutMs: number,
): Promise<Uint8Array> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const m = await nc.request(subject, body, { timeout: Math.max(1, until - Date.now()) });
      return m.data;
    } catch (e) {
      const noResponders =
        /no responders/i.test(String((e as Error).message)) || (e as { code?: string }).code === '503';
      if (!noResponders || Date.now() + 250 > until)
        throw new Error(`request on ${subject} failed: ${(e as Error).message}`, { cause: e });
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Sends `request` (validated against `schema`) on `subject` and returns the reply validated against `replySchema`,
 * whose ids must agree with `expected`: through Nest's NATS client when there is one (the services' controllers),
 * else as a plain nats.js request (bench/messaging.ts's stand-in responders). Throws on an invalid reply.
 */
export async function requestReply<Q extends z.ZodType, R extends z.ZodType>(
  via: { readonly nc: NatsConnection; readonly natsClient?: Pick<ClientProxy, 'send'> | undefined },
  subject: string,
  schema: Q,
  request: z.input<Q>,
  replySchema: R,
  expected: Expected,
  timeoutMs: number,
): Promise<z.output<R>> {
  const bytes = via.natsClient
    ? new TextEncoder().encode(
        JSON.stringify(await sendWithRetry(via.natsClient, subject, schema.parse(request), timeoutMs)),
      )
    : await requestWithRetry(via.nc, subject, encodeMessage(schema, request, subject), timeoutMs);
  const r = decodeMessage(replySchema, bytes, `reply to ${subject}`, expected);
  if (!r.ok) throw r.error;
  return r.value;
}

/**
 * Whether a failed JetStream call may succeed if tried again: a timeout, no responders (503), or a stream without a
 * leader while a clustered broker elects one (nats-server 2.9 answers "jetstream not enabled" or times out for the
 * 5-11 s of an election). Content errors (a wrong sha256, a size limit, an undecodable LoRA) are not transient.
 */
export function isTransientNatsError(e: unknown): boolean {
  const err = e as { message?: unknown; code?: unknown; name?: unknown };
  if (err?.code === '503' || err?.code === 'TIMEOUT' || err?.name === 'TimeoutError') return true;
  return /timeout|timed out|no responders|jetstream (is )?not enabled|no leader|leader(ship)? (election|change)|temporarily unavailable/i.test(
    String(err?.message ?? ''),
  );
}

/** Calls `fn` until it succeeds, fails with a non-transient error, or `deadlineAt` (epoch ms) has passed. */
export async function retryTransient<T>(fn: () => Promise<T>, deadlineAt: number, pauseMs = 500): Promise<T> {
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (!isTransientNatsError(e) || Date.now() + pauseMs > deadlineAt) throw e;
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  }
}

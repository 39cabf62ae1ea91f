import { randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { after, before } from 'node:test';
import { connectTransport } from '../../src/connection.js';
import { startPrivateNats, type PrivateNats } from './nats-server.js';

/** The broker these tests run against (the machine's nats-server -js, or NATS_URL). */
export const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';

/** Connects or fails the test with what to do about it; never skips. */
export async function connectOrFail(): Promise<NatsConnection> {
  try {
    return await connectTransport(NATS_URL, { timeoutMs: 2000 });
  } catch (e) {
    throw new Error(
      `libs/protocol tests need a NATS server with JetStream at ${NATS_URL} ` +
        `(start one with "nats-server -js", or set NATS_URL): ${(e as Error).message}`,
      { cause: e },
    );
  }
}

/** A job id no other test run uses, so concurrent runs never share streams or buckets. */
export function uniqueJobId(prefix: string): string {
  return `t-${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

/** Resolves when `cond()` holds, polling every 10 ms; rejects naming `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Retries `fn` every 250 ms until it returns without throwing; rejects with the last error after `timeoutMs`.
 * JetStream on a cluster answers with errors or timeouts while it elects leaders: nats-server 2.9 takes a few
 * seconds to elect a stream's new leader after its leader died, and the meta leader needs every peer's heartbeat
 * before it places an R3 stream. 90 s by default: under a full test run's load a node can lag its heartbeats long
 * enough for the meta leader to find "no suitable peers for placement" of an R3 stream for a while (alone it takes
 * 1-3 s).
 */
export async function eventually<T>(what: string, fn: () => Promise<T>, timeoutMs = 90_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      return await fn();
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`${what}: still failing after ${timeoutMs} ms: ${String(last)}`);
}

/**
 * For a test file on a private nats-server of its own: starts it and connects in `before` (handing the connection
 * to `use`), closes both in `after`.
 */
export function usePrivateNats(use: (nc: NatsConnection) => void): void {
  let server: PrivateNats | undefined;
  let nc: NatsConnection | undefined;
  before(async () => {
    server = await startPrivateNats(() => '');
    nc = await connectTransport(server.url, { timeoutMs: 5000 });
    use(nc);
  });
  after(async () => {
    await nc?.close();
    await server?.stop();
  });
}

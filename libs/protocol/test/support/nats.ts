import { randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectTransport } from '../../src/connection.js';

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

/**
 * Where the aggregator's round ports (ports-nats.ts) get a round's ClientUpdates and ClientMetrics from: the
 * aggregator's Nest event handlers (AggregatorInbox in services/aggregator/aggregator-inbox.ts, fed by
 * AggregatorController), or, for a caller without them (bench/messaging.ts, bench/soak.ts), subscriptions of the
 * ports' own.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import {
  collectUpdates,
  roundMetricsPattern,
  type CollectOptions,
  type RoundCollection,
} from '../../libs/protocol/src/index.js';

/** The source of a round's ClientUpdates and ClientMetrics. */
export interface RoundInbox {
  /** Round `c.round`'s update collection (libs/protocol collector.ts); resolves once no update of it can be missed. */
  collect(c: CollectOptions): Promise<RoundCollection>;
  /** Each message on `fl.<job>.round.<round>.metrics.*`, until the returned stop; resolves once none can be missed. */
  metrics(round: number, onMessage: (subject: string, data: Uint8Array) => void): Promise<() => void>;
}

/** The ports' own subscriptions on `nc` (callers without event handlers: bench/messaging.ts). */
export function subscriptionInbox(nc: NatsConnection, jobId: string): RoundInbox {
  return {
    collect: (c) => collectUpdates(nc, c),
    metrics: async (round, onMessage) => {
      const sub = nc.subscribe(roundMetricsPattern(jobId, round), {
        callback: (err, msg) => void (err === null && onMessage(msg.subject, msg.data)),
      });
      await nc.flush().catch((e: unknown) => {
        sub.unsubscribe();
        throw e;
      });
      return () => sub.unsubscribe();
    },
  };
}

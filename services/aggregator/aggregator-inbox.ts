/**
 * The aggregator's inbox: AggregatorController's event handlers hand it every message on the job's update and metrics
 * subjects (one core NATS subscription each, NatsEventServer), and it passes each to the round's open collection
 * (libs/protocol openCollection: validation, planned clients, dedupe, quorum, deadline, late updates) or metrics
 * listener (ports-nats.ts: ClientMetrics validation). The round logic stays in the libs and the ports; this is the
 * routing by round that the per-round subscriptions did before.
 *
 * Updates of a round before the one being collected are stale: logged and counted (`reason="stale"`), which
 * watchStaleUpdates' subscription did before. An update of a round with no collection open yet is dropped, as it
 * was before the round's subscription existed: the round replays the updates stored in KV once it opens.
 */
import {
  openCollection,
  parseUpdateSubject,
  type CollectOptions,
  type OpenCollection,
  type RoundCollection,
} from '../../libs/protocol/src/index.js';
import type { JsonLogger } from '../common/logger.js';
import type { ServiceMetrics } from '../common/metrics.js';
import type { RoundInbox } from '../common/round-inbox.js';

type MetricsListener = (subject: string, data: Uint8Array) => void;

export class AggregatorInbox implements RoundInbox {
  readonly #collections = new Map<number, Set<OpenCollection>>();
  readonly #metrics = new Map<number, Set<MetricsListener>>();
  /** The round being collected (or next to be); updates of earlier rounds are stale. Moved by the aggregator. */
  collecting = 0;

  constructor(
    readonly jobId: string,
    /** Resolves once the event handlers' subscriptions are live on the server. */
    private readonly listening: () => Promise<void>,
    private readonly log: JsonLogger,
    private readonly counters: ServiceMetrics,
  ) {}

  /** Opens round `c.round`'s collection once the handlers listen, so a fast client's update cannot be missed. */
  async collect(c: CollectOptions): Promise<RoundCollection> {
    await this.listening();
    const collection = openCollection(c);
    const open = this.#collections.get(c.round) ?? new Set<OpenCollection>();
    this.#collections.set(c.round, open.add(collection));
    return {
      result: collection.result,
      takeLate: () => collection.takeLate(),
      close: async () => {
        open.delete(collection);
        if (open.size === 0 && this.#collections.get(c.round) === open) this.#collections.delete(c.round);
        await collection.close();
      },
    };
  }

  async metrics(round: number, onMessage: MetricsListener): Promise<() => void> {
    await this.listening();
    const listeners = this.#metrics.get(round) ?? new Set<MetricsListener>();
    this.#metrics.set(round, listeners.add(onMessage));
    return () => {
      listeners.delete(onMessage);
      if (listeners.size === 0 && this.#metrics.get(round) === listeners) this.#metrics.delete(round);
    };
  }

  /** Rounds with an open update collection (ascending). */
  openRounds(): number[] {
    return [...this.#collections.keys()].toSorted((a, b) => a - b);
  }

  /** A message on `fl.<job>.round.<r>.update.<client>` (AggregatorController). */
  update(subject: string, data: Uint8Array): void {
    const t = subject.split('.');
    const round = roundOf(t[3]);
    if (round === null || t[1] !== this.jobId) return;
    // The collection checks the rest (a client token that is no id is rejected there, as on its own subscription).
    for (const collection of this.#collections.get(round) ?? []) collection.deliver(subject, data);
    const parts = parseUpdateSubject(subject);
    const currentRound = this.collecting;
    if (parts !== null && parts.round < currentRound) {
      this.counters.rejectedUpdates.inc({ reason: 'stale' });
      this.log.write('warn', 'update for an ended round', {
        clientId: parts.clientId,
        round: parts.round,
        currentRound,
        subject,
      });
    }
  }

  /** A message on `fl.<job>.round.<r>.metrics.<client>` (AggregatorController). */
  clientMetrics(subject: string, data: Uint8Array): void {
    const t = subject.split('.');
    const round = roundOf(t[3]);
    if (round === null || t[1] !== this.jobId) return;
    for (const listener of this.#metrics.get(round) ?? []) listener(subject, data);
  }
}

/** The round of a subject's round token, as a per-round subscription would match it; null if none would. */
function roundOf(token: string | undefined): number | null {
  if (token === undefined || !/^(0|[1-9][0-9]*)$/.test(token)) return null;
  const round = Number(token);
  return Number.isSafeInteger(round) ? round : null;
}

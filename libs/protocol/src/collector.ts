/**
 * Collection of one round's client updates with quorum + deadline, so stragglers and dead clients cannot
 * stall a job (wait-for-all with day-long timeouts is a recurring complaint about NVIDIA FLARE swarms, e.g.
 * KatherLab/MediSwarm#346: one transient client failure aborted a 15-17 h run).
 *
 * Use: `const c = await collectUpdates(nc, opts)` (resolves once the subscription is live on the server),
 * then publish the plan / enqueue the tasks, then `await c.result`, and `await c.close()` when late updates
 * no longer matter. Subscribing before publishing the plan is what makes a fast client impossible to miss.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { ProtocolError, QuorumNotReachedError } from './errors.js';
import { ClientUpdateSchema, decodeMessage, type ClientUpdate } from './messages.js';
import { assertClientId, assertJobId, assertRound, parseUpdateSubject, roundUpdatesPattern } from './subjects.js';
import type { ProtocolLogger } from './logger.js';

/** What happens to an update that arrives after the round closed. */
export type LatePolicy = 'discard' | 'staleness-weighted';

export interface CollectOptions {
  readonly jobId: string;
  readonly round: number;
  /** The clients planned for this round; updates from anyone else are rejected. */
  readonly expected: readonly string[];
  /** Distinct updates needed to close the round at the deadline (1..expected.length). */
  readonly quorum: number;
  /** Time (ms, from the call) after which the round closes with what it has, or fails below quorum. */
  readonly deadlineMs: number;
  /**
   * 'discard' (default): late updates are only reported. 'staleness-weighted': they are also kept, and
   * `takeLate()` hands them to the next aggregation, which discounts them by staleness.
   */
  readonly onLate?: LatePolicy;
  /** An update arrived after the round closed (log it with the client id). */
  readonly onLateUpdate?: (late: LateUpdate) => void;
  /**
   * An update was accepted for the round (in time, planned, first from its client), as it arrives: the caller can
   * fetch and aggregate it now instead of after the round closes (aggregation as updates arrive).
   */
  readonly onAccepted?: (update: ClientUpdate) => void;
  /** A client sent a second update for the round; the first one is kept. */
  readonly onDuplicate?: (dup: DuplicateUpdate) => void;
  /** A message on the round's update subjects was malformed, impersonated another client, or came from an unplanned client. */
  readonly onRejected?: (rejected: RejectedUpdate) => void;
  /** Default console. */
  readonly logger?: ProtocolLogger;
}

export interface LateUpdate {
  readonly clientId: string;
  readonly round: number;
  readonly update: ClientUpdate;
  /** ms between the round closing and this update arriving. */
  readonly lateByMs: number;
  /** True under 'staleness-weighted' (retrievable with `takeLate()`). */
  readonly kept: boolean;
}

export interface DuplicateUpdate {
  readonly clientId: string;
  readonly round: number;
}

export interface RejectedUpdate {
  readonly subject: string;
  readonly error: ProtocolError;
}

export interface CollectResult {
  /** Accepted updates in arrival order, one per client. */
  readonly updates: readonly ClientUpdate[];
  /** Planned clients with no update when the round closed. */
  readonly missing: readonly string[];
  /** 'all': every planned client delivered; 'deadline': closed at the deadline with >= quorum. */
  readonly closedBy: 'all' | 'deadline';
  /** ms from the call to the close. */
  readonly elapsedMs: number;
}

/** A live collection: `result` settles once; late updates keep being reported until `close()`. */
export interface RoundCollection {
  /** Resolves when all planned clients delivered or the deadline passed with quorum; rejects with QuorumNotReachedError. */
  readonly result: Promise<CollectResult>;
  /** Drains the late updates kept under 'staleness-weighted'. */
  takeLate(): LateUpdate[];
  /** Stops listening (late updates after this are not seen). Idempotent. */
  close(): Promise<void>;
}

function checkOptions(o: CollectOptions): void {
  assertJobId(o.jobId);
  assertRound(o.round);
  o.expected.forEach((c) => assertClientId(c));
  if (new Set(o.expected).size !== o.expected.length)
    throw new RangeError(`collectUpdates: expected clients contain duplicates`);
  if (!Number.isInteger(o.quorum) || o.quorum < 1 || o.quorum > o.expected.length) {
    throw new RangeError(
      `collectUpdates: quorum ${o.quorum} must be an integer in 1..${o.expected.length} (the planned clients)`,
    );
  }
  if (!(o.deadlineMs > 0) || !Number.isFinite(o.deadlineMs)) {
    throw new RangeError(`collectUpdates: deadlineMs ${o.deadlineMs} must be a positive number of milliseconds`);
  }
}

/** A collection fed by its owner: `deliver` each message of the round's update subjects, in arrival order. */
export interface OpenCollection extends RoundCollection {
  /** One message on `fl.<job>.round.<r>.update.<client>`: validated, deduplicated, counted or reported. */
  deliver(subject: string, data: Uint8Array): void;
}

/**
 * The round's collection without a subscription of its own: the caller hands it every message of the round's update
 * subjects (the aggregator's Nest event handler does). Same checks, quorum, deadline (from now) and late-update
 * reporting as `collectUpdates`, which is this plus a subscription.
 */
export function openCollection(opts: CollectOptions): OpenCollection {
  checkOptions(opts);
  const log = opts.logger ?? console;
  const policy: LatePolicy = opts.onLate ?? 'discard';
  const expected = new Set(opts.expected);
  const accepted = new Map<string, ClientUpdate>();
  const kept: LateUpdate[] = [];
  const started = Date.now();
  let closedAt: number | null = null;
  let settle!: { resolve: (r: CollectResult) => void; reject: (e: Error) => void };
  const result = new Promise<CollectResult>((resolve, reject) => (settle = { resolve, reject }));
  // The caller awaits `result` only after publishing the plan; a rejection before that is not "unhandled".
  result.catch(() => undefined);

  // A throwing user callback must not kill the subscription, which would blind the rest of the round.
  const report = <T>(fn: ((x: T) => void) | undefined, x: T): void => {
    try {
      fn?.(x);
    } catch (e) {
      log.warn(`collector round ${opts.round}: callback threw: ${(e as Error).message}`);
    }
  };
  const reject = (subject: string, error: ProtocolError): void => {
    log.warn(`collector: rejected update: ${error.message}`);
    report(opts.onRejected, { subject, error });
  };

  const closeRound = (): void => {
    if (closedAt !== null) return;
    closedAt = Date.now();
    clearTimeout(timer);
    const missing = opts.expected.filter((c) => !accepted.has(c));
    const elapsedMs = closedAt - started;
    if (missing.length === 0) settle.resolve({ updates: [...accepted.values()], missing, closedBy: 'all', elapsedMs });
    else if (accepted.size >= opts.quorum)
      settle.resolve({ updates: [...accepted.values()], missing, closedBy: 'deadline', elapsedMs });
    else
      settle.reject(
        new QuorumNotReachedError(opts.jobId, opts.round, [...accepted.keys()], missing, opts.quorum, opts.deadlineMs),
      );
  };

  const onMessage = (subject: string, data: Uint8Array): void => {
    const parts = parseUpdateSubject(subject);
    if (parts === null)
      return reject(subject, new ProtocolError(subject, [{ path: '', reason: 'not an update subject' }]));
    const { clientId } = parts;
    const decoded = decodeMessage(ClientUpdateSchema, data, subject, {
      jobId: opts.jobId,
      round: opts.round,
      clientId,
    });
    if (!decoded.ok) return reject(subject, decoded.error);
    if (!expected.has(clientId)) {
      return reject(
        subject,
        new ProtocolError(subject, [
          { path: 'clientId', reason: `${clientId} is not planned for round ${opts.round}` },
        ]),
      );
    }
    if (accepted.has(clientId)) {
      log.warn(`collector round ${opts.round}: duplicate update from ${clientId} ignored (first one kept)`);
      return report(opts.onDuplicate, { clientId, round: opts.round });
    }
    if (closedAt !== null) {
      const late: LateUpdate = {
        clientId,
        round: opts.round,
        update: decoded.value,
        lateByMs: Date.now() - closedAt,
        kept: policy === 'staleness-weighted',
      };
      // Remember it either way, so a second late copy from the same client counts as a duplicate.
      accepted.set(clientId, decoded.value);
      if (late.kept) kept.push(late);
      log.warn(
        `collector round ${opts.round}: late update from ${clientId} (${late.lateByMs} ms after close, ${late.kept ? 'kept' : 'discarded'})`,
      );
      return report(opts.onLateUpdate, late);
    }
    accepted.set(clientId, decoded.value);
    report(opts.onAccepted, decoded.value);
    if (accepted.size === expected.size) closeRound();
  };

  const timer = setTimeout(closeRound, opts.deadlineMs);
  return {
    result,
    deliver: onMessage,
    takeLate: () => kept.splice(0, kept.length),
    close: async () => {
      clearTimeout(timer);
      // Closing before the round settled counts as the deadline passing now.
      closeRound();
    },
  };
}

/** Subscribes to `fl.<job>.round.<r>.update.*` and returns once the server has the subscription. */
export async function collectUpdates(nc: NatsConnection, opts: CollectOptions): Promise<RoundCollection> {
  const collection = openCollection(opts);
  const log = opts.logger ?? console;
  const sub: Subscription = nc.subscribe(roundUpdatesPattern(opts.jobId, opts.round), {
    callback: (err, msg) => {
      if (err !== null) return log.warn(`collector round ${opts.round}: subscription error: ${err.message}`);
      collection.deliver(msg.subject, msg.data);
    },
  });
  try {
    await nc.flush();
  } catch (e) {
    sub.unsubscribe();
    await collection.close();
    throw e;
  }
  return {
    result: collection.result,
    takeLate: () => collection.takeLate(),
    close: async () => {
      if (!sub.isClosed()) sub.unsubscribe();
      await collection.close();
    },
  };
}

/** An update for a round that is no longer collected (it ended, or the collector was restarted past it). */
export interface StaleUpdate {
  readonly clientId: string;
  readonly round: number;
  /** The round being collected (or next to be) when it arrived. */
  readonly currentRound: number;
  readonly subject: string;
}

export interface StaleWatchOptions {
  readonly jobId: string;
  /** The round being collected now; updates of earlier rounds are stale. */
  readonly currentRound: () => number;
  readonly onStale: (stale: StaleUpdate) => void;
}

/**
 * Watches every round's update subjects (`fl.<job>.round.*.update.*`) and reports updates of rounds before
 * `currentRound()`: once a round's collection is closed its subscription is gone, so without this a late update
 * (a slow trainer, a redelivered task of an ended round) vanishes without a log line. Only the subject is parsed
 * (round and client; the publish permission ties the client to it), so watching costs no decoding. The current
 * round's updates are left to its collector. Returns a stop function.
 */
export async function watchStaleUpdates(nc: NatsConnection, opts: StaleWatchOptions): Promise<() => void> {
  assertJobId(opts.jobId);
  const sub = nc.subscribe(`fl.${opts.jobId}.round.*.update.*`, {
    callback: (err, msg) => {
      if (err !== null) return;
      const parts = parseUpdateSubject(msg.subject);
      if (parts === null || parts.jobId !== opts.jobId) return;
      const currentRound = opts.currentRound();
      if (parts.round >= currentRound) return;
      try {
        opts.onStale({ clientId: parts.clientId, round: parts.round, currentRound, subject: msg.subject });
      } catch {
        // A throwing callback must not end the watch.
      }
    },
  });
  await nc.flush();
  return () => sub.unsubscribe();
}

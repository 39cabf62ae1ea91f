/**
 * Client training work as a JetStream work-queue stream with one durable pull consumer shared by every
 * trainer replica: each task goes to exactly one replica, a replica that dies before acking gets its task
 * redelivered to another after `ackWait`, and the consumer's pending count is what KEDA scales on.
 *
 * Pooled (default): one unfiltered consumer, any replica trains any client. Per client (`clientId`): a data owner's
 * replicas pull only that client's tasks through the filtered consumer `client-<id>`, which is all a client's NATS
 * identity may create and read (auth.ts); such a queue is never created here, only opened.
 */
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { streamExists } from './connection.js';
import { ProtocolError } from './errors.js';
import type { ProtocolLogger } from './logger.js';
import { decodeMessage, encodeMessage, TrainTaskSchema, type TrainTask } from './messages.js';
import {
  assertJobId,
  clientConsumerName,
  taskPattern,
  taskStreamName,
  taskSubject,
  TRAINER_CONSUMER,
} from './subjects.js';
import { jetStreamReplicas } from './replicas.js';

export interface WorkQueueOptions {
  readonly jobId: string;
  /** Durable consumer name shared by the replicas. Default `client-trainer` (TRAINER_CONSUMER). */
  readonly consumer?: string;
  /**
   * Pull only this client's tasks, through the filtered consumer `client-<id>` (`consumer` is then ignored). The
   * stream must exist already: a client identity may not create it.
   */
  readonly clientId?: string;
  /** Default 'file'. */
  readonly storage?: 'file' | 'memory';
  /** JetStream replicas of a stream this call creates. Default FEDBIOT_JS_REPLICAS, else 1 (replicas.ts). */
  readonly replicas?: number;
  /** Window (ms) in which re-enqueueing the same job/round/client is dropped as a duplicate. Default 120000. */
  readonly duplicateWindowMs?: number;
  /** Default console. */
  readonly logger?: ProtocolLogger;
}

export interface ConsumeOptions {
  /**
   * How long (ms) a delivered task may go without ack or `inProgress()` before it is redelivered.
   * Consumer-wide: the durable consumer is created or updated with it, so all replicas should agree.
   * Default 30000.
   */
  readonly ackWaitMs?: number;
  /** Deliveries per task before it is given up (terminated). Consumer-wide. Default 5. */
  readonly maxDeliver?: number;
  /** Longest (ms) one pull waits for a task; bounds how quickly `stop()` returns when idle. Min 1000, default 1000. */
  readonly pullExpiresMs?: number;
  /** Called when a malformed task is terminated (in addition to a logger warning). */
  readonly onRejected?: (info: RejectedTask) => void;
  /** Called when the handler threw. */
  readonly onFailed?: (info: FailedTask) => void;
  /**
   * Asked before each task: a reason to skip it (e.g. "round 3 already completed", from the job state), or null to
   * train it. A skipped task is acked without running the handler and logged with its round and client, so a
   * replica does not train tasks of rounds that have ended (a redelivery after a crash, a backlog after an outage).
   * Absent: every task is trained. An error here counts as a handler failure (redelivered).
   */
  readonly skipTask?: (task: TrainTask) => string | null | Promise<string | null>;
  /** A task was skipped through `skipTask`. */
  readonly onSkipped?: (info: SkippedTask) => void;
}

export interface SkippedTask {
  readonly task: TrainTask;
  readonly seq: number;
  readonly reason: string;
}

export interface TaskContext {
  /** Stream sequence of the task (unique per enqueue). */
  readonly seq: number;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  /** Resets the ack timer (`msg.working()`): call it more often than `ackWaitMs` during long steps. */
  inProgress(): void;
}

/**
 * Trains one task. Must resolve only after the client's update blob is uploaded and the ClientUpdate
 * published: the task is acked when it resolves, and never before.
 */
export type TaskHandler = (task: TrainTask, ctx: TaskContext) => Promise<void>;

export interface RejectedTask {
  readonly seq: number;
  readonly subject: string;
  readonly error: ProtocolError;
}

export interface FailedTask {
  readonly task: TrainTask;
  readonly seq: number;
  readonly deliveryCount: number;
  readonly error: unknown;
  /** True when this was the last allowed delivery: the task was terminated, not left for redelivery. */
  readonly final: boolean;
}

/** Queue depth as the JetStream consumer sees it. */
export interface QueueDepth {
  /** Tasks not yet delivered to any replica (KEDA's lag). */
  readonly pending: number;
  /** Delivered, neither acked nor terminated yet. */
  readonly ackPending: number;
  /** Tasks delivered more than once so far. */
  readonly redelivered: number;
}

/** A running consumption; `stop()` ends pulling and waits for the task in progress to finish. */
export interface Consumption {
  stop(): Promise<void>;
  /** Resolves when the pull loop ended (after `stop()`, or when the connection closed). */
  readonly done: Promise<void>;
}

export class WorkQueue {
  readonly stream: string;
  readonly consumerName: string;
  readonly #log: ProtocolLogger;

  private constructor(
    readonly jobId: string,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    consumer: string,
    readonly filterSubject: string | undefined,
    logger: ProtocolLogger,
  ) {
    this.stream = taskStreamName(jobId);
    this.consumerName = consumer;
    this.#log = logger;
  }

  /** Opens the job's work-queue stream, creating it if missing. */
  static async open(nc: NatsConnection, opts: WorkQueueOptions): Promise<WorkQueue> {
    const jobId = assertJobId(opts.jobId);
    const jsm = await jetstreamManager(nc);
    const consumer =
      opts.clientId === undefined ? (opts.consumer ?? TRAINER_CONSUMER) : clientConsumerName(opts.clientId);
    const filter = opts.clientId === undefined ? undefined : taskSubject(jobId, opts.clientId);
    const q = new WorkQueue(jobId, jetstream(nc), jsm, consumer, filter, opts.logger ?? console);
    // An existing stream is used as it is: `add` with other options would fail on a config mismatch.
    if (await streamExists(nc, q.stream)) return q;
    if (filter !== undefined)
      throw new Error(
        `work queue ${q.stream} does not exist yet: the aggregator creates it when the job starts (client ${opts.clientId})`,
      );
    await jsm.streams.add({
      name: q.stream,
      subjects: [taskPattern(jobId)],
      retention: RetentionPolicy.Workqueue,
      num_replicas: jetStreamReplicas(opts.replicas),
      storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
      duplicate_window: nanos(opts.duplicateWindowMs ?? 120_000),
    });
    return q;
  }

  /**
   * Validates and enqueues `task`. Enqueueing the same job/round/client (and secure-aggregation round id) again
   * within the duplicate window is a no-op (`duplicate: true`), so a restarted aggregator can re-plan a round safely.
   */
  async enqueue(task: Readonly<TrainTask>): Promise<{ seq: number; duplicate: boolean }> {
    const subject = taskSubject(this.jobId, task.clientId);
    if (task.jobId !== this.jobId) {
      throw new ProtocolError(subject, [
        { path: 'jobId', reason: `is ${task.jobId} but this queue serves job ${this.jobId}` },
      ]);
    }
    // Training is deduplicated (a re-planned round must not train twice); evaluation is not: it changes no
    // state, so a restarted aggregator's re-enqueued evaluate task simply recomputes the same metrics. A secure-
    // aggregation task is one attempt of its round's exchange (its plan's fresh roundId): a re-planned secure round
    // is a new exchange with new keys, which the clients must join, so its tasks are new messages.
    const msgID = `${task.jobId}.${task.round}.${task.clientId}${task.secagg ? `.${task.secagg.roundId}` : ''}`;
    const ack = await this.js.publish(
      subject,
      encodeMessage(TrainTaskSchema, task, subject),
      task.kind === 'evaluate' ? {} : { msgID },
    );
    return { seq: ack.seq, duplicate: ack.duplicate };
  }

  /** Creates the durable consumer, or updates its ackWait/maxDeliver when they differ. */
  async #ensureConsumer(ackWaitMs: number, maxDeliver: number): Promise<void> {
    const wanted: Partial<ConsumerConfig> = { ack_wait: nanos(ackWaitMs), max_deliver: maxDeliver };
    const info = await this.jsm.consumers.info(this.stream, this.consumerName).catch((e: unknown) => {
      if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound) return null; // consumer not found
      throw e;
    });
    if (info === null) {
      await this.jsm.consumers
        .add(this.stream, {
          durable_name: this.consumerName,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          ...(this.filterSubject === undefined ? {} : { filter_subject: this.filterSubject }),
          ...wanted,
        })
        .catch((e: unknown) => {
          const overlap = /workqueue/i.test((e as Error).message)
            ? `; a job's tasks are pulled either by pooled trainers (consumer ${TRAINER_CONSUMER}) or by per-client ` +
              `trainers (consumers client-<id>), not both, and this job's queue already has the other kind`
            : '';
          throw new Error(
            `work queue ${this.stream}: cannot create consumer ${this.consumerName}: ${(e as Error).message}${overlap}`,
            { cause: e },
          );
        });
    } else if (info.config.ack_wait !== wanted.ack_wait || info.config.max_deliver !== maxDeliver) {
      // With the filter: the update then goes through the filtered create subject, the one a client may use.
      await this.jsm.consumers.update(this.stream, this.consumerName, {
        ...wanted,
        ...(this.filterSubject === undefined ? {} : { filter_subject: this.filterSubject }),
      });
    }
  }

  /**
   * Pulls tasks one at a time (a replica never holds tasks it is not working on, so they stay available
   * to others) and runs `handler` on each. Outcomes:
   * - handler resolves: the task is acked (confirmed by the server);
   * - handler throws: the task is left unacked and redelivered after `ackWaitMs`, exactly like a crashed
   *   replica, except on its last allowed delivery, where it is terminated and reported as final;
   * - the task does not decode: it is terminated with a logged reason, never redelivered.
   */
  async consume(handler: TaskHandler, opts: ConsumeOptions = {}): Promise<Consumption> {
    const ackWaitMs = opts.ackWaitMs ?? 30_000;
    const maxDeliver = opts.maxDeliver ?? 5;
    await this.#ensureConsumer(ackWaitMs, maxDeliver);
    const consumer = await this.js.consumers.get(this.stream, this.consumerName);
    const stopping = new AbortController();
    let current: ConsumerMessages | undefined;
    const loop = async (): Promise<void> => {
      while (!stopping.signal.aborted) {
        current = await consumer.fetch({ max_messages: 1, expires: Math.max(1000, opts.pullExpiresMs ?? 1000) });
        // Take the task out of the pull request before working on it: while the request's iterator is open its
        // idle-heartbeat monitor runs, and a task longer than two heartbeats ended the loop ("heartbeats missed").
        const batch: JsMsg[] = [];
        for await (const msg of current) batch.push(msg);
        for (const msg of batch) await this.#handle(msg, handler, maxDeliver, opts);
      }
    };
    const done = loop().catch((e: unknown) => {
      // A closed connection ends the loop; unacked work is redelivered elsewhere by the server.
      if (!stopping.signal.aborted)
        this.#log.warn(`work queue ${this.stream}: consumer loop ended: ${(e as Error).message}`);
    });
    return {
      done,
      stop: async () => {
        stopping.abort();
        current?.stop();
        await done;
      },
    };
  }

  async #handle(msg: JsMsg, handler: TaskHandler, maxDeliver: number, opts: ConsumeOptions): Promise<void> {
    const where = `${msg.subject} (task #${msg.seq})`;
    const decoded = decodeMessage(TrainTaskSchema, msg.data, where, { jobId: this.jobId });
    if (!decoded.ok) {
      msg.term();
      this.#log.warn(`work queue ${this.stream}: terminated malformed task: ${decoded.error.message}`);
      opts.onRejected?.({ seq: msg.seq, subject: msg.subject, error: decoded.error });
      return;
    }
    const deliveryCount = msg.info.deliveryCount;
    try {
      const skip = (await opts.skipTask?.(decoded.value)) ?? null;
      if (skip !== null) {
        const t = decoded.value;
        this.#log.warn(
          `work queue ${this.stream}: skipped task #${msg.seq} (round ${t.round}, client ${t.clientId}): ${skip}`,
        );
        await msg.ackAck().catch(() => false);
        opts.onSkipped?.({ task: t, seq: msg.seq, reason: skip });
        return;
      }
      await handler(decoded.value, { seq: msg.seq, deliveryCount, inProgress: () => msg.working() });
    } catch (error) {
      const final = deliveryCount >= maxDeliver;
      if (final) msg.term();
      this.#log.warn(
        `work queue ${this.stream}: task #${msg.seq} (round ${decoded.value.round}, client ${decoded.value.clientId}) ` +
          `failed on delivery ${deliveryCount}/${maxDeliver}` +
          `${final ? ', terminated' : ', will be redelivered after ackWait'}: ${(error as Error)?.message ?? error}`,
      );
      opts.onFailed?.({ task: decoded.value, seq: msg.seq, deliveryCount, error, final });
      return;
    }
    const confirmed = await msg.ackAck().catch(() => false);
    if (!confirmed) {
      // The update is already published; a redelivery would produce a duplicate the collector drops.
      this.#log.warn(`work queue ${this.stream}: ack of task #${msg.seq} not confirmed; it may be redelivered`);
    }
  }

  /** Queue depth for autoscaling (the numbers KEDA's nats-jetstream scaler reads). */
  async pending(): Promise<QueueDepth> {
    try {
      const info = await this.jsm.consumers.info(this.stream, this.consumerName);
      return { pending: info.num_pending, ackPending: info.num_ack_pending, redelivered: info.num_redelivered };
    } catch (e) {
      if (!(e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound)) throw e;
      // No replica has consumed yet: everything in the stream is pending.
      const s = await this.jsm.streams.info(this.stream);
      return { pending: s.state.messages, ackPending: 0, redelivered: 0 };
    }
  }

  /** Deletes the stream and its consumer (end of a job, tests). */
  async destroy(): Promise<void> {
    await this.jsm.streams.delete(this.stream);
  }
}

/** The highest round the aggregator has planned so far, as seen on `fl.<job>.round.*.plan`. */
export interface PlannedRounds {
  /** -1 before any plan was seen. */
  latest(): number;
  stop(): void;
}

/**
 * Follows the job's round plans (clients may subscribe to them). The aggregator plans round r + 1 only after round r
 * closed, and a restarted one re-plans the round it resumes, never an earlier one, so a task of a round below
 * `latest()` belongs to a round that has ended: `skipEndedRounds` turns that into a `skipTask` for `consume`.
 * Only the subject is parsed (the plan's validation is the trainer's business).
 */
export async function watchPlannedRounds(nc: NatsConnection, jobId: string): Promise<PlannedRounds> {
  assertJobId(jobId);
  let latest = -1;
  const prefix = `fl.${jobId}.round.`;
  const sub = nc.subscribe(`${prefix}*.plan`, {
    callback: (err, msg) => {
      if (err !== null) return;
      const r = Number(msg.subject.slice(prefix.length, -'.plan'.length));
      if (Number.isSafeInteger(r) && r > latest) latest = r;
    },
  });
  await nc.flush();
  return { latest: () => latest, stop: () => sub.unsubscribe() };
}

/** A `skipTask` for `consume`: skips tasks of rounds before the latest planned one. */
export function skipEndedRounds(plans: Pick<PlannedRounds, 'latest'>): (task: TrainTask) => string | null {
  return (task) =>
    task.round < plans.latest()
      ? `round ${task.round} has ended (the aggregator planned round ${plans.latest()})`
      : null;
}

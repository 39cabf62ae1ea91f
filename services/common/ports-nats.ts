/**
 * The NATS binding of the round coordinator's ports (distributed FedBiOT): what the aggregator calls instead of the
 * in-process ports of the standalone job (libs/fedbiot job-stages.ts).
 *
 *   trainClients: adapter + emulator LoRA -> BlobStore; one TrainTask per client on the work queue; ClientUpdates
 *                 collected with quorum + deadline; update blobs downloaded; results in the planned client order
 *   align:        AlignRequest on fl.<job>.align (server-alignment replies with the emulator LoRA's blob ref)
 *   evaluate:     eval.mode simulation: request on fl.<job>.round.<r>.evaluate (the evaluator replies with AdapEmu
 *                 and AdapFu rows per client, from every client's test set); eval.mode private: AdapFu from the
 *                 evaluator on the owner's validation set (row client 'owner') and, at the same time, one evaluate
 *                 task per client on the work queue, whose trainer publishes AdapEmu on its own test set as a
 *                 ClientMetrics (numbers only) on fl.<job>.round.<r>.metrics.<client>
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { ClientProxy } from '@nestjs/microservices';
import { subscriptionInbox, type RoundInbox } from './round-inbox.js';
import {
  AlignReplySchema,
  AlignRequestSchema,
  ClientMetricsSchema,
  ClientUpdateSchema,
  EvalRequestSchema,
  PROTOCOL_VERSION,
  QuorumNotReachedError,
  RoundPlanSchema,
  alignSubject,
  decodeMessage,
  encodeMessage,
  evaluateSubject,
  planSubject,
  updateSubject,
  updateBucketName,
  blobBucketName,
  publishMessage,
  runSecAggAggregator,
  type BlobRef,
  type SecAggAggregatorResult,
  type SecAggPlan,
  type BlobStore,
  type ClientUpdate,
  type EvalMode,
  type StateStore,
  type TrainingConfig,
  type WorkQueue,
} from '../../libs/protocol/src/index.js';
import {
  loraBytes,
  type ClientRoundReceipt,
  type ClientRoundResult,
  type RoundPorts,
  type UpdateSink,
  clientSeed,
  pooledScores,
  secureRoundResult,
  type EvalScores,
} from '../../libs/fedbiot/src/index.js';
import type { JobContext } from './job-context.js';
import { getLora, putLora } from './lora-blobs.js';
import { requestReply, retryTransient } from './requests.js';
import { EvalReplySchema, evalModeRow } from './evaluation-wire.js';
import { secAggPlanFor } from './privacy-check.js';

/** KV key of a client's update for a round (written by the trainer before it publishes the update). */
export function updateKey(round: number, clientId: string): string {
  return `update.${round}.${clientId}`;
}

// ---- the ports -------------------------------------------------------------------------------------------------

export interface NatsPortsOptions {
  readonly nc: NatsConnection;
  readonly blobs: BlobStore;
  readonly queue: WorkQueue;
  /**
   * The job's KV. Trainers store each ClientUpdate there (`updateKey`) before publishing it; a resumed aggregator
   * republishes the stored updates of the round it re-runs, since updates published while it was down are gone.
   */
  readonly state?: StateStore;
  /** Aborting closes the round being collected (its deadline timer too) and fails the port calls. */
  readonly signal?: AbortSignal;
  /** Blob ref of the emulator package's manifest (trainers check they hold that package). */
  readonly model: BlobRef;
  /** Updates needed to close a round at the deadline; default every planned client. */
  readonly quorum?: number;
  /** Round deadline (ms); default 600000. */
  readonly deadlineMs?: number;
  /** Limit for one alignment / evaluation request (ms, including waiting for a responder); default 600000. */
  readonly requestTimeoutMs?: number;
  /** Index of the next alignment call (0 on a fresh job; resumed jobs: completed rounds + 1). */
  readonly nextAlignCall: number;
  /** A client's update was dropped (malformed message, impersonation, unreadable blob). */
  readonly onRejected?: (clientId: string, reason: string) => void;
  /** Late or duplicate updates (logged by the caller). */
  readonly onNotice?: (message: string) => void;
  /** Round phases as they happen (metrics, dashboard). */
  readonly onPhase?: (round: number, phase: 'collecting' | 'collected', detail: Record<string, unknown>) => void;
  /**
   * Nest's NATS client for the request/reply calls (alignment: server-alignment's AlignmentController; evaluation:
   * the evaluator's EvaluatorController); absent: plain nats.js requests (bench/messaging.ts's stand-ins).
   */
  readonly natsClient?: Pick<ClientProxy, 'send'>;
  /** Private evaluation: every client of the federation, each asked for AdapEmu on its own test set. */
  readonly evalClients?: readonly string[];
  /** Where updates and client metrics arrive (the aggregator's Nest event handlers); default subscriptionInbox(nc). */
  readonly inbox?: RoundInbox;
  /**
   * Secure aggregation: how long the aggregator waits for the unmasking step's answers (clients that died after
   * masking are recovered from the others' shares after it); default 10000.
   */
  readonly secAggUnmaskTimeoutMs?: number;
  /** Update blobs downloaded at once while a round is collected (each in flight is held in memory); default 4. */
  readonly downloadConcurrency?: number;
}

/** What the ports use of a JobContext: the spec-derived parts, no model or data (a benchmark can build it from a config). */
export type PortsContext = Pick<JobContext, 'jobId' | 'spec' | 'specs' | 'clientSettings'>;

/** The coordinator's ports bound to NATS; see the module comment. */
/** One row of RoundPorts.evaluate's answer. */
type EvalResultRow = Awaited<ReturnType<RoundPorts['evaluate']>>[number];

export function natsRoundPorts(ctx: PortsContext, o: NatsPortsOptions): RoundPorts {
  const { nc, blobs, queue } = o;
  const jobId = ctx.jobId;
  const deadlineMs = o.deadlineMs ?? ctx.spec.aggregation.deadlineMs ?? 600_000;
  const requestTimeoutMs = o.requestTimeoutMs ?? 600_000;
  let alignCall = o.nextAlignCall;
  const inbox = o.inbox ?? subscriptionInbox(nc, jobId);
  const training = (round: number, clientId: string): TrainingConfig => ({
    localSteps: ctx.clientSettings.localSteps,
    learningRate: ctx.clientSettings.lr,
    batchSize: ctx.clientSettings.batchSize,
    proximalWeight: ctx.clientSettings.proxEps,
    seed: clientSeed(ctx.spec, round, clientId),
  });
  /**
   * One training round: tasks out, ClientUpdates in (quorum + deadline). In the clear (`secure` absent) each accepted
   * update's blob is downloaded; under secure aggregation every task carries the round's SecAgg plan, the updates
   * carry counts only, and runSecAggAggregator (listening before any task goes out) yields the survivors' sum.
   */
  const trainRound = async (
    round: number,
    clients: readonly string[],
    adapter: Parameters<RoundPorts['trainClients']>[2],
    emulator: Parameters<RoundPorts['trainClients']>[3],
    sink: UpdateSink | undefined,
    secure: SecAggPlan | undefined,
  ): Promise<{ results: (ClientRoundResult | ClientRoundReceipt)[]; secagg?: SecAggAggregatorResult }> => {
    o.signal?.throwIfAborted();
    // Each accepted update's blob is downloaded as it arrives (at most `downloadConcurrency` at once) and, given a
    // sink, handed to it and dropped: the coordinator folds it into the round's running FedAvg, so the aggregator
    // holds a few updates at a time, not the round's. Results (or receipts) are returned in the planned order.
    const got = new Map<string, ClientRoundResult | ClientRoundReceipt>();
    const pending: Promise<void>[] = [];
    const waiting: (() => void)[] = [];
    let active = 0;
    const maxActive = Math.max(1, o.downloadConcurrency ?? 4);
    const fetchUpdate = async (u: ClientUpdate): Promise<void> => {
      if (secure) {
        // Counts only: the update itself is in the masked sum (a blob ref sent anyway is ignored, never read).
        const { clientId, tokens, examples, meanLoss } = u;
        got.set(clientId, { clientId, tokens, examples, meanLoss, bytes: 0 });
        return;
      }
      if (active >= maxActive) await new Promise<void>((r) => waiting.push(r));
      active++;
      const clientId = u.clientId;
      try {
        // Only the sender's own update bucket (or the shared one) counts: a ref into another client's
        // bucket would pass that client's update off as the sender's.
        if (u.adapterLora === undefined)
          throw new Error('no adapterLora (counts only, but this round is in the clear)');
        const b = u.adapterLora.bucket;
        if (b !== updateBucketName(jobId, clientId) && b !== blobBucketName(jobId))
          throw new Error(`bucket ${b} is neither ${updateBucketName(jobId, clientId)} nor the shared bucket`);
        // A clustered broker that loses the bucket's leader times out until a new one is elected: retried until
        // the round's deadline, so a node loss does not cost an honest client its update.
        const ref = u.adapterLora;
        const lora = await retryTransient(() => getLora(blobs, ref, ctx.specs.adapter), deadlineAt);
        const r: ClientRoundResult = {
          clientId,
          adapter: lora,
          tokens: u.tokens,
          examples: u.examples,
          meanLoss: u.meanLoss,
        };
        if (sink) {
          sink(r);
          const { adapter: _, ...counts } = r;
          got.set(clientId, { ...counts, bytes: loraBytes(lora) });
        } else got.set(clientId, r);
      } catch (e) {
        o.onRejected?.(clientId, `update blob ${u.adapterLora?.name ?? '(none)'}: ${(e as Error).message}`);
      } finally {
        active--;
        waiting.shift()?.();
      }
    };
    const adapterRef = await putLora(blobs, adapter);
    const emulatorRef = await putLora(blobs, emulator);
    const quorum = Math.min(o.quorum ?? ctx.spec.aggregation.quorum ?? clients.length, clients.length);
    const deadlineAt = Date.now() + deadlineMs;
    const collection = await inbox.collect({
      jobId,
      round,
      expected: clients,
      quorum,
      deadlineMs,
      onRejected: (r) => o.onRejected?.(r.subject.split('.').at(-1) ?? '?', r.error.message),
      onLateUpdate: (l) =>
        o.onNotice?.(`late update from ${l.clientId} for round ${l.round} (${l.lateByMs} ms after close), discarded`),
      onDuplicate: (d) => o.onNotice?.(`duplicate update from ${d.clientId} for round ${d.round}, first kept`),
      onAccepted: (u) => void pending.push(fetchUpdate(u)),
      // onRejected/onLateUpdate/onDuplicate report everything; the collector's own warnings would repeat them.
      logger: { warn: () => {} },
    });
    const abort = (): void => void collection.close();
    o.signal?.addEventListener('abort', abort, { once: true });
    // Secure aggregation: the aggregator's side of the exchange listens before the first task goes out.
    let secagg: Promise<SecAggAggregatorResult> | undefined;
    if (secure) {
      let listening!: () => void;
      const ready = new Promise<void>((r) => (listening = r));
      secagg = runSecAggAggregator({
        nc,
        plan: secure,
        stepTimeoutMs: Math.max(1, deadlineAt - Date.now()),
        unmaskTimeoutMs: o.secAggUnmaskTimeoutMs ?? 10_000,
        onListening: listening,
        onRejected: (subject, reason) => o.onRejected?.(subject.split('.').at(-1) ?? '?', `secagg: ${reason}`),
        // Masked inputs arrive as blobs, each only from its sender's own update bucket.
        blobs: { store: blobs, bucketOf: (c) => updateBucketName(jobId, c) },
        ...(o.signal ? { signal: o.signal } : {}),
      });
      secagg.catch(() => {}); // awaited below
      await Promise.race([ready, secagg]);
    }
    try {
      const plan = {
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        round,
        clients: [...clients],
        quorum,
        deadlineAt,
        model: o.model,
        adapterLora: adapterRef,
        emulatorLora: emulatorRef,
        training: training(round, clients[0]!),
      };
      publishMessage(nc, planSubject(jobId, round), RoundPlanSchema, plan);
      for (const clientId of clients) {
        await queue.enqueue({
          protocolVersion: PROTOCOL_VERSION,
          jobId,
          round,
          clientId,
          model: o.model,
          adapterLora: adapterRef,
          emulatorLora: emulatorRef,
          training: training(round, clientId),
          deadlineAt,
          ...(secure ? { secagg: secure } : {}),
        });
      }
      let replayed = 0;
      for (const clientId of clients) {
        const stored = await o.state?.get(updateKey(round, clientId), ClientUpdateSchema);
        if (!stored) continue;
        // The stored message is the client's own, validated again by the collector like any other.
        nc.publish(updateSubject(jobId, round, clientId), encodeMessage(ClientUpdateSchema, stored.value, 'kv'));
        replayed++;
      }
      o.onPhase?.(round, 'collecting', { clients: [...clients], quorum, deadlineAt, replayed });
      let result;
      try {
        result = await collection.result;
      } catch (e) {
        if (e instanceof QuorumNotReachedError) throw new Error(`round ${round}: ${e.message}`, { cause: e });
        throw e;
      }
      o.onPhase?.(round, 'collected', {
        received: result.updates.map((u) => u.clientId),
        missing: result.missing,
        closedBy: result.closedBy,
        elapsedMs: result.elapsedMs,
      });
      // Every update accepted in time was handed to fetchUpdate as it arrived; wait for the last downloads.
      await Promise.all(pending);
      // The planned order, not arrival order: without a sink FedAvg then sums in the same order as the standalone
      // job; with one, the coordinator's StreamingFedAvg restores that order itself.
      const inTime = new Set(result.updates.map((u) => u.clientId));
      const results = clients.flatMap((c) => {
        const r = inTime.has(c) ? got.get(c) : undefined;
        return r ? [r] : [];
      });
      return secagg ? { results, secagg: await secagg } : { results };
    } finally {
      o.signal?.removeEventListener('abort', abort);
      await collection.close();
    }
  };
  const ports: RoundPorts = {
    trainClients: async (round, clients, adapter, emulator, sink) =>
      (await trainRound(round, clients, adapter, emulator, sink, undefined)).results,
    trainClientsSecure: async (round, clients, adapter, emulator) => {
      let total = 0;
      for (const t of adapter.tensors.values()) total += t.length;
      const plan = secAggPlanFor(ctx.spec, jobId, round, clients, total);
      const { results, secagg } = await trainRound(round, clients, adapter, emulator, undefined, plan);
      const r = secagg!;
      return secureRoundResult(results, r, {
        secagg_threshold: plan.threshold,
        secagg_graph: plan.graph.kind === 'complete' ? 'complete' : `secagg+ k=${plan.graph.k}`,
        secagg_clip_range: plan.clipRange,
        // Masked, then gone before revealing shares: recovered from the others' Shamir shares.
        secagg_recovered_after_masking: r.unmaskMissing,
        ...(r.rejected.length > 0 ? { secagg_rejected: r.rejected } : {}),
      });
    },
    align: async (adapter, steps) => {
      o.signal?.throwIfAborted();
      const call = alignCall++;
      if (steps === 0) return null;
      const subject = alignSubject(jobId);
      const request = {
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        call,
        adapterLora: await putLora(blobs, adapter),
        steps,
      };
      // Nest's NATS transport (ClientNats -> server-alignment's @MessagePattern); a plain request where the caller
      // has no Nest client (bench/messaging.ts's stand-in server answers raw requests).
      const v = await requestReply(
        o,
        subject,
        AlignRequestSchema,
        request,
        AlignReplySchema,
        { jobId },
        requestTimeoutMs,
      );
      if ('error' in v) throw new Error(`server-alignment refused call ${call}: ${v.error}`);
      return {
        emulator: await getLora(blobs, v.emulatorLora, ctx.specs.emulator),
        stats: { loss: v.loss, l2: v.l2, kl: v.kl, steps: v.steps },
      };
    },
    evaluate: async (round, adapter, emulator) => {
      o.signal?.throwIfAborted();
      const refs = { adapterLora: await putLora(blobs, adapter), emulatorLora: await putLora(blobs, emulator) };
      if (ctx.spec.eval.mode === 'simulation') return requestEvaluation(round, refs, ['adapEmu', 'adapFu']);
      // Private: the owner's AdapFu and the clients' AdapEmu at the same time (different machines).
      const [owner, clients] = await Promise.all([
        ctx.spec.eval.ownerValidation ? requestEvaluation(round, refs, ['adapFu']) : [],
        clientEvaluation(round, refs),
      ]);
      return [...clients, ...owner];
    },
  };
  return ports;

  async function requestEvaluation(
    round: number,
    refs: { adapterLora: BlobRef; emulatorLora: BlobRef },
    modes: Exclude<EvalMode, 'base'>[],
  ): Promise<EvalResultRow[]> {
    const subject = evaluateSubject(jobId, round);
    const request = { protocolVersion: PROTOCOL_VERSION, jobId, round, ...refs, modes };
    // Nest's NATS transport (ClientNats -> the evaluator's @MessagePattern); a plain request without a Nest client.
    const v = await requestReply(o, subject, EvalRequestSchema, request, EvalReplySchema, { jobId }, requestTimeoutMs);
    if ('error' in v) throw new Error(`evaluator refused round ${round}: ${v.error}`);
    return v.rows.map((row) => ({
      method: row.method,
      client: row.client,
      scores: { testLoss: row.testLoss, accuracy: row.accuracy, tokens: row.tokens, items: row.items },
    }));
  }

  /**
   * One evaluate task per client; its trainer (the only holder of that client's test set) answers with a
   * ClientMetrics. Waits for every client or the round deadline; a client that does not answer is left out of the
   * rows (and of the pooled 'all' row) and reported.
   */
  async function clientEvaluation(
    round: number,
    refs: { adapterLora: BlobRef; emulatorLora: BlobRef },
  ): Promise<EvalResultRow[]> {
    const expected = o.evalClients ?? [];
    const adapEmu = evalModeRow(ctx.spec.job.method, 'adapEmu');
    const got = new Map<string, EvalScores>();
    let allIn: () => void = () => {};
    const complete = new Promise<void>((r) => (allIn = r));
    const listening = inbox.metrics(round, (subject, data) => {
      const clientId = subject.split('.').at(-1)!;
      const d = decodeMessage(ClientMetricsSchema, data, subject, { jobId, round, clientId });
      if (!d.ok) return o.onRejected?.(clientId, `metrics: ${d.error.message}`);
      if (!expected.includes(clientId) || got.has(clientId)) return;
      const m = d.value;
      got.set(clientId, { testLoss: m.loss, accuracy: m.accuracy, tokens: m.tokens, items: m.items });
      if (got.size === expected.length) allIn();
    });
    const deadlineAt = Date.now() + deadlineMs;
    let timer: NodeJS.Timeout | undefined;
    const abort = (): void => allIn();
    o.signal?.addEventListener('abort', abort, { once: true });
    try {
      await listening;
      for (const clientId of expected)
        await queue.enqueue({
          protocolVersion: PROTOCOL_VERSION,
          jobId,
          round,
          clientId,
          kind: 'evaluate',
          model: o.model,
          ...refs,
          training: training(round, clientId),
          deadlineAt,
        });
      if (expected.length > 0)
        await Promise.race([complete, new Promise<void>((r) => (timer = setTimeout(r, deadlineMs)))]);
      o.signal?.throwIfAborted();
    } finally {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', abort);
      void listening.then(
        (stop) => stop(),
        () => {},
      );
    }
    const missing = expected.filter((c) => !got.has(c));
    if (missing.length > 0)
      o.onNotice?.(`round ${round}: no AdapEmu metrics from ${missing.join(', ')} by the deadline; left out`);
    const rows: EvalResultRow[] = expected
      .filter((c) => got.has(c))
      .map((c) => ({ method: adapEmu, client: c, scores: got.get(c)! }));
    if (rows.length > 0) rows.push({ method: adapEmu, client: 'all', scores: pooledScores(rows.map((r) => r.scores)) });
    return rows;
  }
}

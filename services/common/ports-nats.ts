/**
 * The NATS binding of the round coordinator's ports (distributed FedBiOT): what the aggregator calls instead of the
 * in-process ports of job.ts, plus the job context every service builds from the same JobSpec so that all four
 * compute exactly what the standalone job computes (same split, LoRA specs, initial LoRAs, seeds and data streams).
 *
 *   trainClients: adapter + emulator LoRA -> BlobStore; one TrainTask per client on the work queue; ClientUpdates
 *                 collected with quorum + deadline; update blobs downloaded; results in the planned client order
 *   align:        request on fl.<job>.align (server-alignment replies with the emulator LoRA's blob ref)
 *   evaluate:     eval.mode simulation: request on fl.<job>.round.<r>.evaluate (the evaluator replies with AdapEmu
 *                 and AdapFu rows per client, from every client's test set); eval.mode private: AdapFu from the
 *                 evaluator on the owner's validation set (row client 'owner') and, at the same time, one evaluate
 *                 task per client on the work queue, whose trainer publishes AdapEmu on its own test set as a
 *                 ClientMetrics (numbers only) on fl.<job>.round.<r>.metrics.<client>
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import type { ClientProxy } from '@nestjs/microservices';
import { sendWithRetry } from './nats-transport.js';
import { subscriptionInbox, type RoundInbox } from './round-inbox.js';
import { CausalLM, type LoraWeights } from '../../libs/model/src/causal-lm.js';
import type { LoraSpec } from '../../libs/model/src/llama.js';
import { defaultCacheRoot } from '../../libs/model/src/graph-store.js';
import {
  BlobRefSchema,
  ClientMetricsSchema,
  ClientUpdateSchema,
  EvalRequestSchema,
  PROTOCOL_VERSION,
  QuorumNotReachedError,
  RoundPlanSchema,
  decodeMessage,
  decodeTensors,
  encodeMessage,
  encodeTensors,
  evaluateSubject,
  planSubject,
  updateSubject,
  updateBucketName,
  blobBucketName,
  publishMessage,
  type BlobRef,
  type BlobStore,
  type PutOptions,
  type StateStore,
  type Tensor,
  type TrainingConfig,
  type WorkQueue,
} from '../../libs/protocol/src/index.js';
import type { ClientRoundResult, RoundPorts } from '../../libs/fedbiot/src/coordinator.js';
import {
  clientStreamSeed,
  loadFederation,
  type FederationData,
  type LoadFederationOptions,
} from '../../libs/fedbiot/src/federation.js';
import type { JobSpec } from '../../libs/fedbiot/src/job-spec.js';
import {
  clientSettingsFor,
  initialLora,
  loraSpecs,
  type ClientSettings,
  type EvalScores,
} from '../../libs/fedbiot/src/roles.js';
import { splitModel, type ModelSplit } from '../../libs/fedbiot/src/split.js';
import { checkPackageSplit, loadEmulatorPackage } from '../../libs/fedbiot/src/emulator-package.js';
import { clientTrainingSeed } from '../../libs/fedbiot/src/seeds.js';

/** Everything a service derives from the job spec; identical in every service of a job. */
export interface JobContext {
  readonly spec: JobSpec;
  /** The protocol job id (spec.job.id). */
  readonly jobId: string;
  /** The full model on the owner's side; the emulator package (numbered like the full model) at a client. */
  readonly lm: CausalLM;
  readonly data: FederationData;
  readonly split: ModelSplit;
  readonly specs: { adapter: LoraSpec; emulator: LoraSpec };
  readonly clientSettings: ClientSettings;
}

function checkDistributed(spec: JobSpec): void {
  if (spec.job.method !== 'fedbiot')
    throw new Error(`job.method: the distributed runtime runs fedbiot only, not ${spec.job.method}`);
  if (!spec.job.id)
    throw new Error('job.id: required by the distributed runtime (it names the NATS subjects, streams and buckets)');
}

/** The job's split of a model of `numLayers` layers (FedBiOT: the top adapter only). */
export function jobSplit(spec: JobSpec, numLayers: number): ModelSplit {
  return splitModel({
    numLayers,
    adapterBottom: 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
}

async function contextFrom(
  spec: JobSpec,
  lm: CausalLM,
  split: ModelSplit,
  where: string,
  opts: LoadFederationOptions,
): Promise<JobContext> {
  if (!lm.tokenizer) throw new Error(`${where} has no tokenizer.json`);
  const data = await loadFederation(spec, lm.tokenizer, defaultCacheRoot(), opts);
  return {
    spec,
    jobId: spec.job.id!,
    lm,
    data,
    split,
    specs: loraSpecs(split, spec.lora),
    clientSettings: clientSettingsFor(spec),
  };
}

/**
 * The model owner's services (aggregator, server-alignment, evaluator): loads the full model and the federation
 * for `spec`, as runJob does for its main phase. Only method `fedbiot` runs distributed; the baselines stay
 * standalone. `opts` says which data the calling service holds (loadFederation's `parts`).
 */
export async function openJobContext(spec: JobSpec, opts: LoadFederationOptions = {}): Promise<JobContext> {
  checkDistributed(spec);
  const lm = await CausalLM.load(spec.model.checkpoint, {
    provider: spec.model.provider,
    ...(spec.model.threads ? { threads: spec.model.threads } : {}),
    ...(spec.model.weightsDtype ? { weightsDtype: spec.model.weightsDtype } : {}),
  });
  return contextFrom(spec, lm, jobSplit(spec, lm.config.numLayers), `model.checkpoint: ${spec.model.checkpoint}`, opts);
}

/**
 * A data owner's trainer: the same context from the emulator package in `packageDir` (fetched and verified by the
 * caller) instead of the full model, which a client never has. The package must hold exactly the client layers
 * of the job's split.
 */
export async function openClientContext(
  spec: JobSpec,
  packageDir: string,
  opts: LoadFederationOptions = {},
): Promise<JobContext> {
  checkDistributed(spec);
  const { lm, manifest } = await loadEmulatorPackage(packageDir, {
    provider: spec.model.provider,
    verify: false,
    ...(spec.model.threads ? { threads: spec.model.threads } : {}),
    ...(spec.model.weightsDtype ? { weightsDtype: spec.model.weightsDtype } : {}),
  });
  try {
    const split = jobSplit(spec, manifest.source.numLayers);
    checkPackageSplit(manifest, split, packageDir);
    return await contextFrom(spec, lm, split, `emulator package ${packageDir}`, opts);
  } catch (e) {
    await lm.release();
    throw e;
  }
}

/** The initial adapter and emulator LoRA of the job (seeds as in job.ts). */
export function initialLoras(ctx: JobContext): { adapter: LoraWeights; emulator: LoraWeights } {
  return {
    adapter: initialLora(ctx.specs.adapter, ctx.lm, ctx.spec.job.seed + 1),
    emulator: initialLora(ctx.specs.emulator, ctx.lm, ctx.spec.job.seed + 2),
  };
}

/** Local-training seed of `clientId` in `round` (the same function as job.ts: seeds.ts). */
export function clientSeed(spec: JobSpec, round: number, clientId: string): number {
  return clientTrainingSeed(spec.job.seed, round, clientId);
}

/** Seed of a client's example stream: job.ts seeds it by the client's index in the federation. */
export function streamSeed(ctx: JobContext, clientId: string): number {
  const client = ctx.data.clients.find((c) => c.id === clientId);
  if (!client) throw new Error(`client ${clientId} is not in the federation ${ctx.data.source}`);
  return clientStreamSeed(ctx.spec.job.seed, client);
}

/** Serialises a LoRA as a safetensors blob; tensors travel flat (the LoraSpec on both ends gives their shapes). */
export function encodeLora(l: LoraWeights): Uint8Array {
  return encodeTensors(new Map<string, Tensor>([...l.tensors].map(([k, v]) => [k, { shape: [v.length], data: v }])), {
    lora: l.spec.name,
  });
}

/** Inverse of encodeLora; `source` names the blob in errors. Tensor names and sizes are checked by assertUpdates. */
export function decodeLora(bytes: Uint8Array, spec: LoraSpec, source: string): LoraWeights {
  const d = decodeTensors(bytes, source);
  return { spec, tensors: new Map([...d.tensors].map(([k, t]) => [k, Float32Array.from(t.data)])) };
}

/** `opts.bucket`: e.g. the client's `updateBucketName` for a trainer's update (default the store's bucket). */
export async function putLora(blobs: BlobStore, l: LoraWeights, opts: PutOptions = {}): Promise<BlobRef> {
  return blobs.put(encodeLora(l), opts);
}

export async function getLora(blobs: BlobStore, ref: BlobRef, spec: LoraSpec): Promise<LoraWeights> {
  return decodeLora(await blobs.get(ref), spec, `${ref.bucket}/${ref.name}`);
}

/** A round's broadcast (adapter and emulator LoRA), both fetched at once so their round trips overlap. */
export async function getBroadcast(
  blobs: BlobStore,
  refs: { readonly adapterLora: BlobRef; readonly emulatorLora: BlobRef },
  specs: { readonly adapter: LoraSpec; readonly emulator: LoraSpec },
): Promise<{ adapter: LoraWeights; emulator: LoraWeights }> {
  const [adapter, emulator] = await Promise.all([
    getLora(blobs, refs.adapterLora, specs.adapter),
    getLora(blobs, refs.emulatorLora, specs.emulator),
  ]);
  return { adapter, emulator };
}

// ---- request/reply messages between the aggregator and server-alignment / evaluator --------------------------

const protocolVersion = z.literal(PROTOCOL_VERSION);
const errorReply = z.strictObject({ protocolVersion, jobId: z.string(), error: z.string().min(1) });

/** Subject on which server-alignment answers alignment requests (queue group `server-alignment`). */
export function alignSubject(jobId: string): `fl.${string}.align` {
  return `fl.${jobId}.align`;
}

/** Pattern of every round's evaluation request (queue group `evaluator`). */
export function evaluatePattern(jobId: string): `fl.${string}.round.*.evaluate` {
  return `fl.${jobId}.round.*.evaluate`;
}

/**
 * Aggregator -> server-alignment. `call` numbers the alignments of a job (0: pre-alignment, r + 1: after round r),
 * so a repeated request (aggregator restarted after the server aligned) is answered from the stored result
 * instead of aligning twice.
 */
export const AlignRequestSchema = z.strictObject({
  protocolVersion,
  jobId: z.string(),
  call: z.int().nonnegative(),
  adapterLora: BlobRefSchema,
  steps: z.int().nonnegative(),
});
export type AlignRequest = z.infer<typeof AlignRequestSchema>;

export const AlignOkSchema = z.strictObject({
  protocolVersion,
  jobId: z.string(),
  call: z.int().nonnegative(),
  emulatorLora: BlobRefSchema,
  loss: z.number(),
  l2: z.number(),
  kl: z.number(),
  steps: z.int().nonnegative(),
});
export const AlignReplySchema = z.union([AlignOkSchema, errorReply]);
export type AlignReply = z.infer<typeof AlignReplySchema>;

export const EvalRowSchema = z.strictObject({
  method: z.string().min(1),
  client: z.string().min(1),
  testLoss: z.number(),
  accuracy: z.number(),
  tokens: z.int().nonnegative(),
  items: z.int().nonnegative(),
});
export type EvalRow = z.infer<typeof EvalRowSchema>;
export const EvalOkSchema = z.strictObject({
  protocolVersion,
  jobId: z.string(),
  round: z.int().nonnegative(),
  rows: z.array(EvalRowSchema).min(1),
});
export const EvalReplySchema = z.union([EvalOkSchema, errorReply]);
export type EvalReply = z.infer<typeof EvalReplySchema>;

/** Mode of an EvalRequest -> the result method of job.ts. */
export const EVAL_METHOD = { adapEmu: 'fedbiot-adapemu', adapFu: 'fedbiot-adapfu', base: 'base' } as const;

/** Mean of per-client scores weighted by tokens (loss) and items (accuracy): the 'all' row, as in job.ts. */
export function pooledScores(scores: readonly EvalScores[]): EvalScores {
  const tokens = scores.reduce((s, x) => s + x.tokens, 0);
  const items = scores.reduce((s, x) => s + x.items, 0);
  return {
    testLoss: scores.reduce((s, x) => s + x.testLoss * x.tokens, 0) / Math.max(tokens, 1),
    accuracy: scores.reduce((s, x) => s + x.accuracy * x.items, 0) / Math.max(items, 1),
    tokens,
    items,
  };
}

/**
 * A request that waits for a responder: services start in any order, so "no responders" is retried until
 * `timeoutMs` runs out. Other failures (a timeout while a responder works) propagate.
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
  const ports: RoundPorts = {
    trainClients: async (round, clients, adapter, emulator): Promise<ClientRoundResult[]> => {
      o.signal?.throwIfAborted();
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
        // onRejected/onLateUpdate/onDuplicate report everything; the collector's own warnings would repeat them.
        logger: { warn: () => {} },
      });
      const abort = (): void => void collection.close();
      o.signal?.addEventListener('abort', abort, { once: true });
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
        // The planned order, not arrival order: FedAvg then sums in the same order as the standalone job.
        const byClient = new Map(result.updates.map((u) => [u.clientId, u]));
        const out: ClientRoundResult[] = [];
        for (const clientId of clients) {
          const u = byClient.get(clientId);
          if (!u) continue;
          try {
            // Only the sender's own update bucket (or the shared one) counts: a ref into another client's
            // bucket would pass that client's update off as the sender's.
            const b = u.adapterLora.bucket;
            if (b !== updateBucketName(jobId, clientId) && b !== blobBucketName(jobId))
              throw new Error(`bucket ${b} is neither ${updateBucketName(jobId, clientId)} nor the shared bucket`);
            const lora = await getLora(blobs, u.adapterLora, ctx.specs.adapter);
            out.push({ clientId, adapter: lora, tokens: u.tokens, examples: u.examples, meanLoss: u.meanLoss });
          } catch (e) {
            o.onRejected?.(clientId, `update blob ${u.adapterLora.name}: ${(e as Error).message}`);
          }
        }
        return out;
      } finally {
        o.signal?.removeEventListener('abort', abort);
        await collection.close();
      }
    },
    align: async (adapter, steps) => {
      o.signal?.throwIfAborted();
      const call = alignCall++;
      if (steps === 0) return null;
      const subject = alignSubject(jobId);
      const req: AlignRequest = {
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        call,
        adapterLora: await putLora(blobs, adapter),
        steps,
      };
      // Nest's NATS transport (ClientNats -> server-alignment's @MessagePattern); a plain request where the caller
      // has no Nest client (bench/messaging.ts's stand-in server answers raw requests).
      const bytes = o.natsClient
        ? new TextEncoder().encode(
            JSON.stringify(await sendWithRetry(o.natsClient, subject, AlignRequestSchema.parse(req), requestTimeoutMs)),
          )
        : await requestWithRetry(nc, subject, encodeMessage(AlignRequestSchema, req, subject), requestTimeoutMs);
      const r = decodeMessage(AlignReplySchema, bytes, `reply to ${subject}`);
      if (!r.ok) throw r.error;
      if ('error' in r.value) throw new Error(`server-alignment refused call ${call}: ${r.value.error}`);
      const v = r.value;
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
    modes: ('adapEmu' | 'adapFu')[],
  ): Promise<EvalResultRow[]> {
    const subject = evaluateSubject(jobId, round);
    const req = { protocolVersion: PROTOCOL_VERSION, jobId, round, ...refs, modes };
    // Nest's NATS transport (ClientNats -> the evaluator's @MessagePattern); a plain request without a Nest client.
    const bytes = o.natsClient
      ? new TextEncoder().encode(
          JSON.stringify(await sendWithRetry(o.natsClient, subject, EvalRequestSchema.parse(req), requestTimeoutMs)),
        )
      : await requestWithRetry(nc, subject, encodeMessage(EvalRequestSchema, req, subject), requestTimeoutMs);
    const r = decodeMessage(EvalReplySchema, bytes, `reply to ${subject}`);
    if (!r.ok) throw r.error;
    if ('error' in r.value) throw new Error(`evaluator refused round ${round}: ${r.value.error}`);
    return r.value.rows.map((row) => ({
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
      .map((c) => ({ method: EVAL_METHOD.adapEmu, client: c, scores: got.get(c)! }));
    if (rows.length > 0)
      rows.push({ method: EVAL_METHOD.adapEmu, client: 'all', scores: pooledScores(rows.map((r) => r.scores)) });
    return rows;
  }
}

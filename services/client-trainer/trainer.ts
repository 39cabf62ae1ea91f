/**
 * A client-trainer replica: pulls TrainTasks from the job's work queue (one at a time; any number of replicas, each
 * serving any client), trains the client's adapter with trainLocally, uploads it, publishes the ClientUpdate on the
 * client's update subject, and only then lets the queue ack the task. A replica that dies before that leaves the
 * task to be redelivered.
 *
 * Determinism across replicas: a client's example stream position lives in KV (`stream.<client>`), written after
 * the update is published, together with the position it started from; a redelivered task for the same round
 * restarts from that position, so any replica computes the same update as the standalone job.
 */
import { hostname } from 'node:os';
import type { ServiceConnection } from '../common/connection.js';
import type { JobStores } from '../common/providers.js';
import { fetchEmulatorPackage, type FetchedPackage } from '../common/emulator-package.js';
import { defaultCacheRoot } from '../../libs/model/src/index.js';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import {
  BlobStore,
  ClientUpdateSchema,
  PROTOCOL_VERSION,
  StateStore,
  WorkQueue,
  blobBucketName,
  updateBucketName,
  publishMessage,
  stateBucketName,
  streamExists,
  taskStreamName,
  updateSubject,
  type ClientMetrics,
  type ClientUpdate,
  type FailedTask,
  type PlannedRounds,
  type RejectedTask,
  type SkippedTask,
  type TaskContext,
  type TrainTask,
  type SecAggPlan,
  runSecAggClient,
  skipEndedRounds,
  watchPlannedRounds,
} from '../../libs/protocol/src/index.js';
import type { TokenizedExample } from '../../libs/data/src/index.js';
import { cryptoRng, prepareClientInput, type SecAggInput } from '../../libs/privacy/src/index.js';
import {
  ExampleStream,
  type JobSpec,
  clientSeed,
  evalVariant,
  evaluateVariant,
  trainLocally,
} from '../../libs/fedbiot/src/index.js';
import { openClientContext, streamSeed, type JobContext } from '../common/job-context.js';
import { getBroadcast, putLora } from '../common/lora-blobs.js';
import { updateKey } from '../common/ports-nats.js';
import { JsonLogger, type LogRecord } from '../common/logger.js';
import { ServiceMetrics } from '../common/metrics.js';
import { JetStreamWorkQueueServer } from '../common/jetstream-transport.js';
import type { ServiceRole } from '../common/role.js';
import { assertServicesPrivacy } from '../common/privacy-check.js';

const position = z.strictObject({ epoch: z.int().nonnegative(), pos: z.int().nonnegative() });
/** KV `stream.<client>`: where the client's data stream stood before and after its last trained round. */
export const StreamStateSchema = z.strictObject({
  protocolVersion: z.literal(PROTOCOL_VERSION),
  clientId: z.string(),
  round: z.int().nonnegative(),
  before: position.nullable(),
  after: position,
});

/** What a task needs once the package is loaded. */
interface Loaded {
  readonly ctx: JobContext;
  readonly nc: NatsConnection;
  readonly blobs: BlobStore;
  readonly state: StateStore;
}

export interface TrainerOptions {
  readonly natsUrl: string;
  /**
   * Where the NATS credentials, TLS files and inbox prefix are read from (NATS_CREDS_FILE, NATS_USER +
   * NATS_PASSWORD_FILE, NATS_INBOX_PREFIX, ...: see libs/protocol credentials.ts). Default process.env; several
   * services in one process each get their own identity this way.
   */
  readonly natsEnv?: NodeJS.ProcessEnv;
  readonly spec: JobSpec;
  /** Replica name in logs and metrics. */
  readonly replica?: string;
  readonly logSink?: (r: LogRecord) => void;
  /** Redelivery delay after a replica stops responding (ms). Default 60000. */
  readonly ackWaitMs?: number;
  /**
   * A data owner's replica: train only this client, pulling its tasks through the per-client consumer and loading
   * only its data (other clients' files need not exist here). Runs under that client's own NATS identity
   * (`natsEnv`), which may not create the job's streams: the replica waits until the aggregator has created them.
   * Unset: a pooled replica that trains any client of the federation.
   */
  readonly clientId?: string;
  /** Where the fetched emulator package is kept (`<cacheRoot>/packages/<sha256>`). Default FEDBIOT_CACHE. */
  readonly cacheRoot?: string;
}

/** The replica's name in logs and metrics. */
export function trainerName(opts: TrainerOptions): string {
  return opts.replica ?? (opts.clientId === undefined ? 'client-trainer' : `client-trainer-${opts.clientId}`);
}

/** What ClientTrainerModule injects (services/client-trainer/trainer.module.ts). */
export interface TrainerDeps {
  readonly log: JsonLogger;
  readonly conn: ServiceConnection;
  readonly stores: JobStores;
}

/**
 * The trainer service class: built by ClientTrainerModule with its connection and stores injected (the module opens
 * and closes the connection); start() watches the round plans and loads the emulator package in the background.
 */
export class ClientTrainer implements ServiceRole {
  readonly name: string;
  readonly log: JsonLogger;
  readonly metrics: ServiceMetrics;
  /** Secure-aggregation exchanges still running (they outlive their task: a replica may train the next client). */
  readonly #exchanges = new Set<Promise<unknown>>();
  /** Tasks this replica completed, as `round/client`. */
  readonly completed: string[] = [];
  readonly #nc: NatsConnection;
  readonly #conn: ServiceConnection;
  readonly #stores: JobStores;
  /**
   * The job context from the emulator package, not an injected provider as the model owner's services' (JOB_CONTEXT,
   * services/common/providers.ts): it cannot be opened from the spec, only from a package that exists once the
   * aggregator has published it, fetched through the job's stores in the background (#run). A holder provider would
   * only move this field and stop() into another class; the replica's load order stays here.
   */
  #ctx: JobContext | undefined;
  /** What a task needs once the package is loaded. */
  #work: Loaded | undefined;
  #queueResolve: (q: WorkQueue | null) => void = () => {};
  readonly #queue = new Promise<WorkQueue | null>((r) => (this.#queueResolve = r));
  /**
   * The NestJS transport strategy that pulls this replica's tasks and hands them to TrainerController (connected
   * by startService; see services/common/jetstream-transport.ts).
   */
  readonly transports: readonly JetStreamWorkQueueServer[];
  #modelSha = '';
  #stopping = false;
  readonly #abort = new AbortController();
  #pullingResolve: () => void = () => {};
  readonly #pullingPromise = new Promise<void>((r) => (this.#pullingResolve = r));
  #loop: Promise<void> = Promise.resolve();
  #ready = false;
  #plans: PlannedRounds | undefined;
  get #plannedRound(): number {
    return this.#plans?.latest() ?? -1;
  }

  constructor(
    private readonly opts: TrainerOptions,
    deps: TrainerDeps,
  ) {
    this.name = trainerName(opts);
    this.log = deps.log;
    this.#conn = deps.conn;
    this.#nc = deps.conn.nc;
    this.#stores = deps.stores;
    this.metrics = new ServiceMetrics(this.name);
    this.transports = [
      new JetStreamWorkQueueServer(
        {
          queue: () => this.#queue,
          closed: () => this.#nc.isClosed(),
          consume: {
            ackWaitMs: opts.ackWaitMs ?? 60_000,
            maxDeliver: 5,
            // A training task of a round the aggregator has moved past would only produce a late update: ack it
            // untrained. Evaluate tasks of round r are issued while round r+1 may already be planned: always run.
            skipTask: (t) => (t.kind === 'evaluate' ? null : skipEndedRounds({ latest: () => this.#plannedRound })(t)),
            onSkipped: (k: SkippedTask) =>
              this.log.write('warn', 'task of an ended round skipped', {
                round: k.task.round,
                clientId: k.task.clientId,
                reason: k.reason,
              }),
            onRejected: (r: RejectedTask) =>
              this.log.write('warn', 'task rejected', { subject: r.subject, reason: r.error.message }),
            onFailed: (f: FailedTask) =>
              this.log.write('error', 'task failed', {
                round: f.task.round,
                clientId: f.task.clientId,
                delivery: f.deliveryCount,
                final: f.final,
                error: String((f.error as Error)?.message ?? f.error),
              }),
          },
        },
        this.log,
      ),
    ];
  }

  ready(): boolean {
    // Not ready while NATS is down: the service can neither take nor deliver work.
    return this.#ready && this.#conn.connected();
  }

  /**
   * Returns at once; the replica then waits for the job, fetches and loads the emulator package and pulls tasks in
   * the background (ready() turns true once it pulls). Waiting here would let a trainer started before the
   * aggregator hold up whoever awaits start(). The connection is the module's (already open).
   */
  async start(): Promise<void> {
    // A privacy mode the services do not implement (secure aggregation with DP) is refused, not run differently.
    assertServicesPrivacy(this.opts.spec);
    const jobId = this.#stores.jobId;
    const nc = this.#nc;
    // Round plans are broadcast to every client: the latest one tells which tasks belong to ended rounds.
    this.#plans = await watchPlannedRounds(nc, jobId);
    this.#loop = this.#run(nc, jobId).catch((e: unknown) => {
      if (!this.#stopping) this.log.write('error', 'trainer stopped', { error: (e as Error).message });
    });
  }

  /** Resolves once the replica pulls tasks (or has stopped); for callers that must know the package is loaded. */
  get pulling(): Promise<void> {
    return this.#pullingPromise;
  }

  async #run(nc: NatsConnection, jobId: string): Promise<void> {
    const clientId = this.opts.clientId;
    if (clientId !== undefined && !(await this.#jobStarted(nc, jobId, clientId))) return;
    const blobs = await this.#stores.blobs();
    this.metrics.trackBlobs(() => blobs.stats);
    const state = await this.#stores.state();
    const pkg = await this.#fetchPackage(blobs, state);
    // Training sets only; a data owner's replica only its own client's. Private evaluation: the test sets too,
    // since AdapEmu on a client's test set is computed here and only its numbers leave.
    const ctx = (this.#ctx = await openClientContext(this.opts.spec, pkg.dir, {
      parts: this.opts.spec.eval.mode === 'private' ? ['train', 'test'] : ['train'],
      ...(clientId === undefined ? {} : { onlyClients: [clientId] }),
    }));
    const queue = await this.#stores.queue({ ...(clientId === undefined ? {} : { clientId }), log: this.log });
    this.#work = { ctx, nc, blobs, state };
    this.#ready = true;
    this.#pullingResolve();
    this.#queueResolve(queue);
  }

  /** Trains one task (TrainerController's TASK_TRAIN handler); resolves once the update is published. */
  async train(task: TrainTask, tc: TaskContext): Promise<void> {
    const w = this.#loaded();
    return this.#train(w.ctx, w.nc, w.blobs, w.state, task, tc);
  }

  /**
   * Evaluates one task (TrainerController's TASK_EVALUATE handler): the ClientMetrics to publish, which the
   * controller does on the injected connection; null for a task past its deadline.
   */
  async evaluate(task: TrainTask): Promise<ClientMetrics | null> {
    const w = this.#loaded();
    if (!this.#checkTask(w.ctx, task)) return null;
    return this.#evaluate(w.ctx, w.blobs, task);
  }

  #loaded(): Loaded {
    // The transport pulls only after #queue resolved, which happens after #work is set.
    if (!this.#work) throw new Error('trainer: a task arrived before the emulator package was loaded');
    return this.#work;
  }

  /**
   * No model folder here: the model owner publishes the emulator package, and this replica fetches it once into its
   * cache (streamed, verified, resumable), logging progress with an ETA every 5 s.
   */
  async #fetchPackage(blobs: BlobStore, state: StateStore): Promise<FetchedPackage> {
    let lastLog = 0;
    const t0 = Date.now();
    const pkg = await fetchEmulatorPackage(blobs, state, {
      cacheRoot: this.opts.cacheRoot ?? defaultCacheRoot(),
      signal: this.#abort.signal,
      stagingId: `${hostname()}-${this.name}`,
      log: (msg, fields) => this.log.info(msg, fields),
      onProgress: (done, total) => {
        if (Date.now() - lastLog < 5000 && done < total) return;
        lastLog = Date.now();
        const s = (Date.now() - t0) / 1000;
        const eta = done > 0 ? ((total - done) * s) / done : NaN;
        this.log.info('fetching the emulator package', {
          mib: +(done / 2 ** 20).toFixed(1),
          ofMib: +(total / 2 ** 20).toFixed(1),
          etaSeconds: Number.isFinite(eta) ? Math.round(eta) : null,
        });
      },
    });
    this.#modelSha = pkg.ref.sha256;
    this.log.info('emulator package ready', {
      dir: pkg.dir,
      layers: pkg.manifest.layers.map((l) => l.source),
      dtype: pkg.manifest.dtype,
      fetchedBytes: pkg.bytesFetched,
    });
    return pkg;
  }

  /**
   * Waits (polling every second) until the aggregator has created the job's task stream, state and blob buckets
   * and this client's update bucket; false when stopped meanwhile.
   */
  async #jobStarted(nc: NatsConnection, jobId: string, clientId: string): Promise<boolean> {
    const streams = [
      taskStreamName(jobId),
      `KV_${stateBucketName(jobId)}`,
      `OBJ_${blobBucketName(jobId)}`,
      `OBJ_${updateBucketName(jobId, clientId)}`,
    ];
    for (let logged = false; !this.#stopping; await new Promise((r) => setTimeout(r, 1000))) {
      const missing = [];
      for (const name of streams) if (!(await streamExists(nc, name))) missing.push(name);
      if (missing.length === 0) return true;
      if (!logged) this.log.info('waiting for the aggregator to start the job', { clientId, missing });
      logged = true;
    }
    return false;
  }

  async #train(
    ctx: JobContext,
    nc: NatsConnection,
    blobs: BlobStore,
    state: StateStore,
    task: TrainTask,
    tc: TaskContext,
  ): Promise<void> {
    const { round, clientId } = task;
    if (!this.#checkTask(ctx, task)) return;
    const expectedSeed = clientSeed(ctx.spec, round, clientId);
    if (task.training.seed !== expectedSeed)
      throw new Error(`task seed ${task.training.seed} differs from this spec's ${expectedSeed} (different job spec?)`);
    const client = ctx.data.clients.find((c) => c.id === clientId);
    if (!client) throw new Error(`client ${clientId} is not in this replica's federation ${ctx.data.source}`);
    const key = `stream.${clientId}`;
    const prev = await state.get(key, StreamStateSchema);
    // A redelivered task of the round already recorded restarts from where that round started.
    const from =
      prev === null
        ? null
        : prev.value.round === round
          ? prev.value.before
          : prev.value.round < round
            ? prev.value.after
            : undefined;
    if (from === undefined)
      throw new Error(
        `client ${clientId}: stream state is at round ${prev!.value.round}, task is round ${round} (stale task)`,
      );
    this.log.info('training', { round, clientId, delivery: tc.deliveryCount });
    const stream = new ExampleStream<TokenizedExample>(client.train, streamSeed(ctx, clientId), from ?? undefined);
    const { adapter, emulator } = await getBroadcast(blobs, task, ctx.specs);
    // Secure aggregation: the exchange starts now (keys are agreed while this client trains) and gets the masked
    // input once training is done; the update itself never leaves this replica in the clear.
    const secure = task.secagg ? this.#startSecAgg(nc, blobs, task, task.secagg, tc) : undefined;
    if (secure === null) return;
    this.metrics.round.set(round);
    const t0 = performance.now();
    let last = t0;
    const r = await trainLocally(
      ctx.lm,
      ctx.split.clientLayers,
      adapter,
      [emulator],
      stream,
      ctx.clientSettings,
      expectedSeed,
      () => {
        const now = performance.now();
        this.metrics.stepSeconds.observe((now - last) / 1000);
        last = now;
        tc.inProgress();
      },
    );
    const ms = performance.now() - t0;
    this.metrics.trainedTokens.inc(r.tokens);
    if (secure) {
      // Counts first (durable, then published), then the masked input: an aggregator that has the masked input
      // of this client has its counts too.
      await this.#reportUpdate(ctx, nc, state, round, clientId, r, ms);
      // The standalone hook's weighting (privacy-aggregation.ts): tokens, examples or 1, capped at W.
      const weighting = ctx.spec.aggregation.weighting;
      const weight = weighting === 'uniform' ? 1 : weighting === 'tokens' ? r.tokens : r.examples;
      const ci = prepareClientInput({
        local: r.adapter.tensors,
        global: adapter.tensors,
        weight,
        maxWeight: secure.plan.maxWeight,
        // DP: clipped to C and this client's share of the noise added, from node:crypto, before masking.
        ...(secure.plan.dp ? { dp: secure.plan.dp, rng: cryptoRng() } : {}),
      });
      secure.input(ci.input);
    } else await this.#publishUpdate(ctx, nc, blobs, state, round, clientId, r, ms);
    await state.put(key, StreamStateSchema, {
      protocolVersion: PROTOCOL_VERSION,
      clientId,
      round,
      before: from,
      after: stream.state,
    });
    this.completed.push(`${round}/${clientId}`);
    this.log.info(secure ? 'counts published, update masked' : 'update published', {
      round,
      clientId,
      loss: r.meanLoss,
      tokens: r.tokens,
      ms: Math.round(ms),
      delivery: tc.deliveryCount,
    });
  }

  /**
   * Starts this client's side of the round's SecAgg exchange (runSecAggClient) in the background; `input` hands it
   * the masked input's source once training is done. Null (task skipped): a redelivered task cannot rejoin an
   * exchange its first delivery started (this client counts as dropped). Throws for a plan that does not match the
   * task.
   */
  #startSecAgg(
    nc: NatsConnection,
    blobs: BlobStore,
    task: TrainTask,
    plan: SecAggPlan,
    tc: TaskContext,
  ): { plan: SecAggPlan; input: (i: SecAggInput) => void } | null {
    const { round, clientId } = task;
    if (plan.jobId !== task.jobId || plan.round !== round || !plan.clients.includes(clientId))
      throw new Error(`secagg plan of ${plan.jobId} round ${plan.round} does not cover ${clientId} in round ${round}`);
    if (tc.deliveryCount > 1) {
      this.log.write('warn', 'redelivered secure-aggregation task skipped (the exchange cannot be rejoined)', {
        round,
        clientId,
        delivery: tc.deliveryCount,
      });
      return null;
    }
    let give!: (i: SecAggInput) => void;
    const input = new Promise<SecAggInput>((resolve) => (give = resolve));
    const exchange = runSecAggClient({
      nc,
      plan,
      clientId,
      input,
      stepTimeoutMs: Math.max(1, task.deadlineAt - Date.now()),
      // A stopped trainer leaves the exchange: the aggregator recovers its masked input from the others' shares.
      signal: this.#abort.signal,
      // The masked input scales with the model: a blob in this client's own update bucket, its ref on NATS.
      blobs: { store: blobs, bucket: updateBucketName(task.jobId, clientId) },
    });
    this.#exchanges.add(exchange);
    exchange.then(
      (x) => {
        this.#exchanges.delete(exchange);
        this.log.info('secure aggregation done', { round, clientId, completed: x.completed });
      },
      (e: unknown) => {
        this.#exchanges.delete(exchange);
        if (!this.#stopping)
          this.log.write('warn', 'secure aggregation failed', { round, clientId, error: (e as Error).message });
      },
    );
    return { plan, input: give };
  }

  /** The update in the clear: uploaded to the client's bucket, stored in KV, published. */
  async #publishUpdate(
    ctx: JobContext,
    nc: NatsConnection,
    blobs: BlobStore,
    state: StateStore,
    round: number,
    clientId: string,
    r: { adapter: Parameters<typeof putLora>[1]; examples: number; tokens: number; meanLoss: number },
    ms: number,
  ): Promise<void> {
    // The client's own update bucket: with per-client credentials no other client can read it (auth.ts).
    const ref = await putLora(blobs, r.adapter, { bucket: updateBucketName(ctx.jobId, clientId) });
    await this.#reportUpdate(ctx, nc, state, round, clientId, r, ms, ref);
  }

  /**
   * The round's ClientUpdate (its counts, and the uploaded adapter's ref unless the adapter goes through secure
   * aggregation), stored in KV, then published.
   */
  async #reportUpdate(
    ctx: JobContext,
    nc: NatsConnection,
    state: StateStore,
    round: number,
    clientId: string,
    r: { examples: number; tokens: number; meanLoss: number },
    ms: number,
    adapterLora?: ClientUpdate['adapterLora'],
  ): Promise<void> {
    const update: ClientUpdate = {
      protocolVersion: PROTOCOL_VERSION,
      jobId: ctx.jobId,
      round,
      clientId,
      ...(adapterLora === undefined ? {} : { adapterLora }),
      examples: r.examples,
      tokens: r.tokens,
      meanLoss: r.meanLoss,
      steps: ctx.clientSettings.localSteps,
      durationMs: Math.round(ms),
    };
    // Durable first: an aggregator that was down when this is published replays it from KV.
    await state.put(updateKey(round, clientId), ClientUpdateSchema, update);
    publishMessage(nc, updateSubject(ctx.jobId, round, clientId), ClientUpdateSchema, update);
    await nc.flush();
  }

  /** False: the task is past its deadline (skipped, logged). Throws for a task of another job or package. */
  #checkTask(ctx: JobContext, task: TrainTask): boolean {
    const { round, clientId } = task;
    if (task.jobId !== ctx.jobId) throw new Error(`task for job ${task.jobId} on the queue of job ${ctx.jobId}`);
    if (Date.now() > task.deadlineAt) {
      this.log.write('warn', 'task past its deadline, skipped', { round, clientId, kind: task.kind ?? 'train' });
      return false;
    }
    if (task.model.sha256 !== this.#modelSha)
      throw new Error(
        `emulator package mismatch: the task wants ${task.model.sha256}, this replica loaded ${this.#modelSha}`,
      );
    return true;
  }

  /**
   * Private evaluation: AdapEmu (the broadcast adapter on this emulator package) on the client's own test set, as
   * the standalone job computes it; only the numbers are published.
   */
  async #evaluate(ctx: JobContext, blobs: BlobStore, task: TrainTask): Promise<ClientMetrics> {
    const { round, clientId } = task;
    const client = ctx.data.clients.find((c) => c.id === clientId);
    if (!client) throw new Error(`client ${clientId} is not in this replica's federation ${ctx.data.source}`);
    if (ctx.spec.eval.mode !== 'private')
      throw new Error(`evaluate task for ${clientId}, but this replica's eval.mode is ${ctx.spec.eval.mode}`);
    const { adapter, emulator } = await getBroadcast(blobs, task, ctx.specs);
    const t0 = performance.now();
    const s = await evaluateVariant(
      ctx.lm,
      evalVariant('emu', ctx.split, ctx.split.numLayers, adapter, emulator),
      client.test,
      client.testItems,
      { batch: ctx.spec.clients.batchSize, seq: ctx.spec.data.maxLength, maxNewTokens: ctx.spec.eval.maxNewTokens },
    );
    const durationMs = Math.round(performance.now() - t0);
    return {
      protocolVersion: PROTOCOL_VERSION,
      jobId: ctx.jobId,
      round,
      clientId,
      mode: 'adapEmu',
      loss: s.testLoss,
      accuracy: s.accuracy,
      tokens: s.tokens,
      items: s.items,
      durationMs,
    };
  }

  async stop(): Promise<void> {
    this.#ready = false;
    this.#stopping = true;
    this.#abort.abort(new Error('trainer stopped'));
    this.#pullingResolve();
    this.#queueResolve(null);
    for (const t of this.transports) await t.close();
    this.#plans?.stop();
    await this.#loop;
    this.#work = undefined;
    // The connection is the module's: NatsConnectionLifecycle drains it when the app closes.
    await this.#ctx?.lm.release();
    this.#ctx = undefined;
  }
}

/**
 * The aggregator: runs the standalone round loop (runRounds) with NATS-bound ports, keeps job state in KV after
 * every completed round and, restarted, resumes from the last completed round with the stored adapter and emulator.
 *
 * Its collaborators are injected by AggregatorModule (aggregator.module.ts): the NATS connection, logger and job
 * stores (services/common/providers.ts), Nest's NATS client for the alignment and evaluation calls, the metrics, the
 * run folder writer, and the inbox that AggregatorController's @EventPattern handlers feed with the round's
 * ClientUpdates and ClientMetrics (over NatsEventServer, this role's transport).
 */
import { RUN_RECORD_KEY, RunRecordSchema, runRecord } from '../common/run-record.js';
import type { ServiceConnection } from '../common/connection.js';
import { publishEmulatorPackage } from '../common/emulator-package.js';
import { defaultCacheRoot, type LoraWeights } from '../../libs/model/src/index.js';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  RoundBlobPruner,
  JOB_STATE_KEY,
  JobStateSchema,
  PROTOCOL_VERSION,
  blobBucketName,
  updateBucketName,
  type BlobRef,
  type BlobStore,
  type StateStore,
  type WorkQueue,
} from '../../libs/protocol/src/index.js';
import {
  coordinatorSettings,
  runRounds,
  updateByteLimits,
  type CoordinatorState,
  type JobSpec,
  type LoadFederationOptions,
} from '../../libs/fedbiot/src/index.js';
import { initialLoras, type JobContext, type LazyJobContext } from '../common/job-context.js';
import { encodeLora, getLora, putLora } from '../common/lora-blobs.js';
import { natsRoundPorts } from '../common/ports-nats.js';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Gauge } from 'prom-client';
import type { ClientNats } from '@nestjs/microservices';
import { join } from 'node:path';
import type { JsonLogger, LogRecord } from '../common/logger.js';
import { checkpointed, type RunFolderWriter } from './run-folder.js';
import { ServiceMetrics } from '../common/metrics.js';
import type { ServiceRole } from '../common/role.js';
import type { JobStores } from '../common/providers.js';
import type { NatsEventServer } from '../common/nats-event-transport.js';
import type { AggregatorInbox } from './aggregator-inbox.js';
import { assertServicesPrivacy, openPrivacy, savePrivacy, secureDpAccount } from './privacy.js';
import { secAggMaskedBytes, secAggMaxWeight } from '../common/privacy-check.js';

/** A coordinator event as runRounds reports it. */
export type RoundEvent = { round: number; kind: string; [k: string]: unknown };

export interface AggregatorOptions {
  readonly natsUrl: string;
  /**
   * Where the NATS credentials, TLS files and inbox prefix are read from (NATS_CREDS_FILE, NATS_USER +
   * NATS_PASSWORD_FILE, NATS_INBOX_PREFIX, ...: see libs/protocol credentials.ts). Default process.env; several
   * services in one process each get their own identity this way.
   */
  readonly natsEnv?: NodeJS.ProcessEnv;
  readonly spec: JobSpec;
  readonly logSink?: (r: LogRecord) => void;
  /**
   * Where the run folder `<runsDir>/<job.id>` is written (config, metrics.jsonl, results, report, adapter, merged
   * model); default FEDBIOT_RUNS_DIR, else the spec's job.outDir.
   */
  readonly runsDir?: string;
  /** Overrides spec.aggregation.deadlineMs / quorum. */
  readonly deadlineMs?: number;
  readonly quorum?: number;
}

/** The aggregator's Prometheus metrics: every service's, plus rounds completed and the latest evaluation. */
export class AggregatorMetrics extends ServiceMetrics {
  /** Rounds completed (checkpointed); survives a restart through KV. */
  readonly roundsCompleted = new Gauge({
    name: 'fl_rounds_completed',
    help: 'Federated rounds completed and checkpointed',
    registers: [this.registry],
  });
  /** The latest evaluation per method and client (client 'all': pooled; 'owner': the owner's validation set). */
  readonly evalLoss = new Gauge({
    name: 'fl_eval_loss',
    help: 'Test loss (nats per token) of the latest evaluation',
    labelNames: ['method', 'client'] as const,
    registers: [this.registry],
  });
  readonly evalAccuracy = new Gauge({
    name: 'fl_eval_accuracy',
    help: 'Exact-match accuracy (0-1) of the latest evaluation',
    labelNames: ['method', 'client'] as const,
    registers: [this.registry],
  });
  /** privacy.dp: the client-level epsilon spent so far at the job's delta (+Inf when sigma is 0). */
  readonly dpEpsilon = new Gauge({
    name: 'fl_dp_epsilon',
    help: 'Client-level DP epsilon spent after the rounds so far (RDP accountant), at delta fl_dp_delta',
    registers: [this.registry],
  });
  readonly dpDelta = new Gauge({
    name: 'fl_dp_delta',
    help: 'The delta of fl_dp_epsilon (privacy.dp.delta)',
    registers: [this.registry],
  });

  constructor() {
    super('aggregator');
  }
}

/**
 * The data the aggregator holds (its job context's, JOB_CONTEXT): the client list only, no client data (updates carry
 * their example counts).
 */
export const AGGREGATOR_DATA: LoadFederationOptions = { parts: [] };

/** What AggregatorModule injects. */
export interface AggregatorDeps {
  readonly log: JsonLogger;
  readonly conn: ServiceConnection;
  readonly stores: JobStores;
  /** The job context (JOB_CONTEXT, AGGREGATOR_DATA): opened by start(), freed by stop(). */
  readonly jobContext: LazyJobContext;
  readonly metrics: AggregatorMetrics;
  readonly folders: RunFolderWriter;
  /** Fed by AggregatorController's event handlers. */
  readonly inbox: AggregatorInbox;
  /** The transport of those handlers (core NATS, on `conn`). */
  readonly events: NatsEventServer;
  /** Nest's NATS client for the alignment and evaluation calls (request/reply to @MessagePattern handlers). */
  readonly natsClient: ClientNats;
}

/** What a run of the job needs, opened once in start(). */
interface RunEnv {
  readonly ctx: JobContext;
  readonly nc: NatsConnection;
  readonly blobs: BlobStore;
  readonly state: StateStore;
  readonly queue: WorkQueue;
  /** The emulator package's manifest blob. */
  readonly model: BlobRef;
  /** The owner's local build of that package (removed when the job completes). */
  readonly packageDir: string;
  /** Deletes blobs of rounds older than the kept checkpoints. */
  readonly pruner: RoundBlobPruner;
}

export class Aggregator implements ServiceRole {
  readonly name = 'aggregator';
  readonly log: JsonLogger;
  readonly metrics: AggregatorMetrics;
  /** AggregatorController's transport, connected by the shared shell once start() resolved. */
  readonly transports: readonly NatsEventServer[];
  /** Coordinator events of this incarnation (train, comm, align, eval, rejected...). */
  readonly events: RoundEvent[] = [];
  readonly #conn: ServiceConnection;
  readonly #stores: JobStores;
  readonly #jobContext: LazyJobContext;
  readonly #folders: RunFolderWriter;
  readonly #inbox: AggregatorInbox;
  readonly #natsClient: ClientNats;
  #ctx: JobContext | undefined;
  #run: Promise<CoordinatorState | null> | undefined;
  #ready = false;
  readonly #abort = new AbortController();

  constructor(
    private readonly opts: AggregatorOptions,
    deps: AggregatorDeps,
  ) {
    this.log = deps.log;
    this.metrics = deps.metrics;
    this.transports = [deps.events];
    this.#conn = deps.conn;
    this.#stores = deps.stores;
    this.#jobContext = deps.jobContext;
    this.#folders = deps.folders;
    this.#inbox = deps.inbox;
    this.#natsClient = deps.natsClient;
  }

  ready(): boolean {
    // Not ready while NATS is down: the service can neither take nor deliver work.
    return this.#ready && this.#conn.connected();
  }

  /** Settles when the job completed (the final state), or with the error that stopped it. null: it was already complete. */
  get done(): Promise<CoordinatorState | null> {
    if (!this.#run) throw new Error('aggregator: not started');
    return this.#run;
  }

  async start(): Promise<void> {
    const spec = this.opts.spec;
    // Before anything is created: a privacy mode the services cannot honour must not run in the clear.
    assertServicesPrivacy(spec);
    // The injected job context (AGGREGATOR_DATA: the client list only), loaded here, after the HTTP shell started.
    this.#ctx = await this.#jobContext.open();
    const ctx = this.#ctx;
    const nc = this.#conn.nc;
    const jobId = ctx.jobId;
    const blobs = await this.#stores.blobs();
    this.metrics.trackBlobs(() => blobs.stats);
    // Update buckets exist before any task goes out: client identities may write into theirs but not create it.
    // Their limits bound what one client can store (max_bytes) and make the aggregator download (per object).
    // Under secure aggregation a client's bucket holds its masked input instead (8 bytes per element).
    const adapter0 = initialLoras(ctx).adapter;
    let elements = 0;
    for (const t of adapter0.tensors.values()) elements += t.length;
    const honest = Math.max(
      encodeLora(adapter0).length,
      spec.privacy?.secureAggregation ? secAggMaskedBytes(elements) : 0,
    );
    const limits = updateByteLimits(spec, honest);
    const updateBuckets = ctx.data.clients.map((c) => updateBucketName(jobId, c.id));
    await Promise.all(updateBuckets.map((b) => blobs.ensureBucket(b, limits)));
    const pruner = new RoundBlobPruner(
      blobs,
      [blobBucketName(jobId), ...updateBuckets],
      spec.aggregation.keepBlobRounds,
    );
    const state = await this.#stores.state();
    const queue = await this.#stores.queue({ log: this.log });
    // The emulator package, never the full model: built once per job, source, split and dtype, then streamed into
    // the package bucket; content-addressed, so a restarted aggregator uploads nothing again. The local build is
    // removed when the job completes (the bucket keeps the published copy until the job's resources are deleted).
    const pkg = await publishEmulatorPackage(blobs, state, {
      jobId,
      source: spec.model.checkpoint,
      split: ctx.split,
      dtype: spec.model.packageDtype,
      cacheRoot: defaultCacheRoot(),
      log: (msg, fields) => this.log.info(msg, fields),
    });
    const env: RunEnv = {
      ctx,
      nc,
      blobs,
      state,
      queue,
      model: pkg.ref,
      packageDir: pkg.dir,
      pruner,
    };
    // Updates of rounds whose collection closed would vanish silently: the inbox logs and counts them (#prepare
    // moves the round it compares with).
    const launch = await this.#prepare(env);
    this.#ready = true;
    this.#run = this.#drive(env, launch);
    // A rejection is observed through `done`; keep Node from reporting it as unhandled meanwhile.
    this.#run.catch(() => {});
  }

  /**
   * Runs the job; when a NATS outage interrupts it (a JetStream call timed out while the connection was down or
   * bounced), waits for the reconnect and resumes from the last checkpoint in KV, exactly as a restarted aggregator
   * would: the interrupted round is re-planned (its training tasks deduplicated, updates already stored replayed).
   * Any other failure ends the job.
   */
  async #drive(env: RunEnv, launch: () => Promise<CoordinatorState | null>): Promise<CoordinatorState | null> {
    const conn = this.#conn;
    for (;;) {
      const disconnects = conn.disconnects();
      try {
        return await launch();
      } catch (e) {
        const outage = conn.disconnects() > disconnects || !conn.connected();
        if (this.#abort.signal.aborted || !outage) {
          this.log.write('error', 'job failed', { jobId: env.ctx.jobId, error: (e as Error).message });
          throw e;
        }
        this.log.write('warn', 'interrupted by a NATS outage; resuming from the last checkpoint once reconnected', {
          error: (e as Error).message,
        });
        while (!conn.connected() && !this.#abort.signal.aborted) await new Promise((r) => setTimeout(r, 500));
        launch = async () => (await this.#prepare(env))();
      }
    }
  }

  /**
   * Reads the job state from KV and returns the run of the remaining rounds (not started yet): a fresh job, a
   * resumed one, or, for a job KV records as completed, the run folder finished if an earlier incarnation died
   * before writing it.
   */
  async #prepare(env: RunEnv): Promise<() => Promise<CoordinatorState | null>> {
    const { ctx, nc, blobs, state, queue, model, pruner } = env;
    const spec = ctx.spec;
    const jobId = ctx.jobId;
    this.#folders.close();
    const stored = await state.get(JOB_STATE_KEY, JobStateSchema);
    const init = initialLoras(ctx);
    let start: CoordinatorState = { round: 0, adapter: init.adapter, emulator: init.emulator, preAligned: false };
    if (stored) {
      const j = stored.value;
      if (j.status === 'completed') {
        this.log.info('job already completed', { jobId, rounds: j.totalRounds });
        // Died after the last checkpoint but before the run folder was finished: finish it from the stored adapter.
        const folder = await this.#folders.open({ round: j.totalRounds, preAligned: true });
        if (!existsSync(join(folder.dir, 'results.json')) && j.adapterLora)
          await this.#finish(await getLora(blobs, j.adapterLora, ctx.specs.adapter));
        return async () => null;
      }
      if (j.totalRounds !== spec.job.rounds)
        throw new Error(`job ${jobId}: stored state has ${j.totalRounds} rounds, the spec ${spec.job.rounds}`);
      start = {
        round: j.lastCompletedRound + 1,
        adapter: j.adapterLora ? await getLora(blobs, j.adapterLora, ctx.specs.adapter) : init.adapter,
        emulator: j.emulatorLora ? await getLora(blobs, j.emulatorLora, ctx.specs.emulator) : init.emulator,
        preAligned: j.emulatorLora !== null,
      };
      this.log.info('resuming job', { jobId, round: start.round, preAligned: start.preAligned });
    }
    this.metrics.roundsCompleted.set(start.round);
    // privacy.dp: the standalone job's aggregate hook (clip, weight, sum, noise, RDP accountant), its accountant
    // resumed from the state stored with the checkpoint this run continues from.
    const privacy = await openPrivacy(spec, ctx.data.clients.length, state, start.round, (line) =>
      this.log.info(line.trim()),
    );
    if (privacy) {
      const delta = spec.privacy!.dp!.delta;
      this.metrics.dpDelta.set(delta);
      // Resumed: the epsilon already spent, before the next round reports its own.
      if (privacy.accountant.steps > 0) this.metrics.dpEpsilon.set(privacy.accountant.getPrivacySpent(delta).epsilon);
    }
    // After an outage this incarnation re-runs the interrupted round: its events of that round go.
    this.events.splice(0, this.events.length, ...this.events.filter((e) => checkpointed(e, start)));
    const folder = await this.#folders.open(start);
    this.log.info('run folder', { dir: folder.dir });
    this.#inbox.collecting = start.round;
    const ports = natsRoundPorts(ctx, {
      nc,
      blobs,
      queue,
      state,
      signal: this.#abort.signal,
      model,
      ...(this.opts.quorum !== undefined ? { quorum: this.opts.quorum } : {}),
      ...(this.opts.deadlineMs !== undefined ? { deadlineMs: this.opts.deadlineMs } : {}),
      nextAlignCall: start.preAligned ? start.round + 1 : 0,
      evalClients: ctx.data.clients.map((c) => c.id),
      natsClient: this.#natsClient,
      inbox: this.#inbox,
      onRejected: (clientId, reason) => {
        this.metrics.rejectedUpdates.inc({ reason: 'message' });
        this.log.write('warn', 'update rejected', { clientId, reason });
      },
      onNotice: (m) => this.log.write('warn', m),
      onPhase: (round, phase, detail) => {
        this.#inbox.collecting = phase === 'collected' ? round + 1 : round;
        if (phase === 'collecting') this.metrics.round.set(round);
        this.log.info(`round ${phase}`, { round, ...detail });
      },
    });
    const writeState = async (
      s: CoordinatorState,
      adapterLora: BlobRef | null,
      emulatorLora: BlobRef | null,
    ): Promise<void> => {
      await state.put(JOB_STATE_KEY, JobStateSchema, {
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        status: s.round >= spec.job.rounds ? 'completed' : 'running',
        totalRounds: spec.job.rounds,
        lastCompletedRound: s.round - 1,
        model,
        adapterLora,
        emulatorLora,
        message: null,
        updatedAt: Date.now(),
      });
    };
    if (!stored) await writeState(start, null, null);
    this.log.info('job started', { jobId, rounds: spec.job.rounds, clients: ctx.data.clients.map((c) => c.id) });
    return () =>
      runRounds(
        ports,
        // stages[0] is the job's method, fedbiot (openJobContext refuses others): per-round alignment, the emulator
        // broadcast every round.
        {
          ...coordinatorSettings(
            ctx,
            ctx.stages[0]!,
            ctx.data.clients.map((c) => c.id),
          ),
          // privacy.secureAggregation: the trainers mask their updates (clipped and noised under DP); the round's
          // aggregate is the secure sum. privacy.dp alone: the standalone hook clips and noises at the server.
          ...(spec.privacy?.secureAggregation
            ? {
                secureAggregation: {
                  maxWeight: secAggMaxWeight(spec),
                  ...(privacy ? { account: secureDpAccount(spec, privacy) } : {}),
                },
              }
            : privacy
              ? { aggregate: privacy.aggregate }
              : {}),
        },
        start,
        {
          onEvent: (e) => {
            this.events.push(e);
            folder.log(e);
            if (e.kind === 'eval') {
              const labels = { method: String(e['method']), client: String(e['client']) };
              this.metrics.evalLoss.set(labels, Number(e['test_loss']));
              this.metrics.evalAccuracy.set(labels, Number(e['accuracy']));
            }
            if (e.kind === 'privacy' && 'epsilon' in e)
              this.metrics.dpEpsilon.set(e['epsilon'] === null ? Infinity : Number(e['epsilon']));
            this.log.info(e.kind, { ...e });
          },
          onRejected: (clientId, reason, check) => {
            this.metrics.rejectedUpdates.inc({ reason: 'check' });
            this.log.write('warn', 'update rejected', { clientId, check, reason });
          },
          onCheckpoint: async (s) => {
            folder.sync();
            const [adapterRef, emulatorRef] = [await putLora(blobs, s.adapter), await putLora(blobs, s.emulator)];
            if (privacy) await savePrivacy(state, privacy, s.round);
            await writeState(s, adapterRef, emulatorRef);
            // Pruning is housekeeping: a broker that cannot answer now (a clustered node catching up, a leader
            // election) must not fail the job; the pruner keeps its marks and tries again at the next checkpoint.
            const pruned = await pruner.checkpoint(new Set([adapterRef.name, emulatorRef.name])).catch((e: unknown) => {
              this.log.write('warn', 'blob pruning failed; retried at the next checkpoint', {
                round: s.round,
                error: String(e),
              });
              return { deleted: 0, bytes: 0 };
            });
            if (pruned.deleted > 0) this.log.info('pruned blobs', { round: s.round, ...pruned });
            this.metrics.roundsCompleted.set(s.round);
            this.log.info('checkpoint', { round: s.round });
          },
        },
      ).then(async (final) => {
        await this.#finish(final.adapter);
        await rm(env.packageDir, { recursive: true, force: true });
        this.log.info('job completed', { jobId, rounds: final.round });
        return final;
      });
  }

  /** Writes the results, report, adapter and merged model into the run folder (the standalone job's files). */
  async #finish(adapter: LoraWeights): Promise<void> {
    const t0 = performance.now();
    const folder = this.#folders.current;
    const table = await folder.finish(this.#ctx!.lm, adapter);
    this.log.info('run folder written', {
      dir: folder.dir,
      ms: Math.round(performance.now() - t0),
      results: table.split('\n'),
    });
    // The dashboard shows the job as finished, with these paths, once this record is in KV.
    const spec = this.#ctx!.spec;
    await (
      await this.#stores.state()
    ).put(RUN_RECORD_KEY, RunRecordSchema, runRecord(spec.job.id ?? '', folder.dir, spec.job.rounds));
  }

  async stop(): Promise<void> {
    this.#ready = false;
    this.#abort.abort(new Error('aggregator stopped'));
    // The event handlers stop; the connection and the Nest client are the module's (closed when the app closes).
    for (const t of this.transports) await t.close();
    this.#folders.close();
    this.#ctx = undefined;
    await this.#jobContext.close();
  }
}

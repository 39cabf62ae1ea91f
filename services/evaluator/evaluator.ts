/**
 * The evaluator (model owner's side): answers `fl.<job>.round.<r>.evaluate` requests with test loss and exact-match
 * accuracy (evaluateVariant, as the standalone job), publishes the pooled scores as an EvalResult on `…evaluated`,
 * and keeps the history (plus the clients' training losses seen on the update subjects) for the dashboard.
 *
 * eval.mode private (the default): it holds no client data at all, only the owner's validation set
 * (`eval.ownerValidation`), and scores each requested mode on it (rows with client 'owner'); clients score AdapEmu
 * themselves. eval.mode simulation: it reads every client's test set and scores per client plus the pooled 'all'.
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  BlobStore,
  ClientUpdateSchema,
  EvalRequestSchema,
  EvalResultSchema,
  PROTOCOL_VERSION,
  decodeMessage,
  evaluatedSubject,
  parseUpdateSubject,
  publishMessage,
  type EvalRequest,
} from '../../libs/protocol/src/index.js';
import { pooledScores, evalVariant, evaluateVariant } from '../../libs/fedbiot/src/index.js';
import type { JobSpec, LoadFederationOptions } from '../../libs/fedbiot/src/index.js';
import type { JobContext } from '../common/job-context.js';
import { getBroadcast } from '../common/lora-blobs.js';
import { EVAL_MODE_ON, evalModeRow, type EvalReply, type EvalRow } from '../common/evaluation-wire.js';
import { OWNER_ROW, loadOwnerValidation, type OwnerValidation } from './owner-validation.js';
import { ServiceMetrics } from '../common/metrics.js';
import type { ServiceRole } from '../common/role.js';
import { RequestService, type RequestServiceDeps, type RequestServiceOptions } from '../common/request-service.js';

export type EvaluatorOptions = RequestServiceOptions;

/**
 * The data the evaluator holds (its job context's, JOB_CONTEXT). Simulation: the clients' test sets only. Private:
 * no client file at all (the manifest's client list only).
 */
export function evaluatorData(spec: JobSpec): LoadFederationOptions {
  return { parts: spec.eval.mode === 'simulation' ? ['test'] : [] };
}

/** What the dashboard shows. */
export interface Progress {
  readonly jobId: string;
  /** The job's method: its result rows are curves, any other row (base, a baseline) a reference line. */
  readonly method: string;
  readonly totalRounds: number;
  /** Evaluation rows per evaluated round (round = rounds completed). */
  readonly evals: { round: number; rows: EvalRow[] }[];
  /** Training loss per client update seen (0-based round). */
  readonly train: { round: number; client: string; loss: number; tokens: number }[];
}

/** What EvaluatorModule injects (services/evaluator/evaluator.module.ts). */
export type EvaluatorDeps = RequestServiceDeps;

/** The evaluator service class: built by EvaluatorModule with its connection and stores injected. */
export class Evaluator extends RequestService implements ServiceRole {
  readonly name = 'evaluator';
  readonly metrics = new ServiceMetrics('evaluator');
  #subs: Subscription[] = [];
  #work: { ctx: JobContext; nc: NatsConnection; blobs: BlobStore } | undefined;
  #queue: Promise<void> = Promise.resolve();
  #progress: { evals: Progress['evals']; train: Progress['train'] } = { evals: [], train: [] };
  /** Private mode: the owner's validation set, the only data scored here. */
  #owner: OwnerValidation | undefined;

  constructor(
    private readonly opts: EvaluatorOptions,
    deps: EvaluatorDeps,
  ) {
    super(opts, deps);
  }

  progress(): Progress {
    const { job } = this.opts.spec;
    return { jobId: job.id ?? '', method: job.method, totalRounds: job.rounds, ...this.#progress };
  }

  async #rows(ctx: JobContext, blobs: BlobStore, req: EvalRequest): Promise<EvalRow[]> {
    const { adapter, emulator } = await getBroadcast(blobs, req, ctx.specs);
    const L = ctx.lm.config.numLayers;
    const rows: EvalRow[] = [];
    const owner = this.#owner;
    for (const mode of req.modes) {
      const on = EVAL_MODE_ON[mode];
      const method = evalModeRow(ctx.spec.job.method, mode);
      const variant =
        on === 'base' ? { layers: ctx.lm.allLayers, loras: [] } : evalVariant(on, ctx.split, L, adapter, emulator);
      if (owner) {
        const s = await evaluateVariant(ctx.lm, variant, owner.test, owner.testItems, {
          batch: ctx.spec.clients.batchSize,
          seq: ctx.spec.data.maxLength,
          maxNewTokens: ctx.spec.eval.maxNewTokens,
        });
        rows.push({ method, client: OWNER_ROW, ...s });
        continue;
      }
      const scores = [];
      for (const c of ctx.data.clients) {
        const s = await evaluateVariant(ctx.lm, variant, c.test, c.testItems, {
          batch: ctx.spec.clients.batchSize,
          seq: ctx.spec.data.maxLength,
          maxNewTokens: ctx.spec.eval.maxNewTokens,
        });
        scores.push(s);
        rows.push({ method, client: c.id, ...s });
      }
      rows.push({ method, client: 'all', ...pooledScores(scores) });
    }
    return rows;
  }

  async start(): Promise<void> {
    const spec = this.opts.spec;
    const simulation = spec.eval.mode === 'simulation';
    // The injected job context (evaluatorData), loaded here, after the HTTP shell started.
    const ctx = await this.jobContext.open();
    if (!simulation) {
      if (!spec.eval.ownerValidation)
        this.log.write('warn', 'eval.ownerValidation is not set: no AdapFu in private mode', {});
      else {
        this.#owner = await loadOwnerValidation(spec, ctx.lm.tokenizer!);
        if (ctx.data.clients.some((c) => c.id === OWNER_ROW))
          throw new Error(`data.federation: a client is named "${OWNER_ROW}", the row name of eval.ownerValidation`);
        this.log.info('owner validation set loaded', { files: this.#owner.files, examples: this.#owner.test.length });
      }
    }
    const nc = this.conn.nc;
    const blobs = await this.stores.blobs();
    this.metrics.trackBlobs(() => blobs.stats);
    this.#work = { ctx, nc, blobs };
    // Training losses for the dashboard; malformed messages are the aggregator's to reject, here they are skipped.
    this.#subs.push(
      nc.subscribe(`fl.${ctx.jobId}.round.*.update.*`, {
        callback: (err, msg: Msg) => {
          if (err) return;
          const where = parseUpdateSubject(msg.subject);
          const d = decodeMessage(ClientUpdateSchema, msg.data, msg.subject, where ?? {});
          if (d.ok)
            this.#progress.train.push({
              round: d.value.round,
              client: d.value.clientId,
              loss: d.value.meanLoss,
              tokens: d.value.tokens,
            });
        },
      }),
    );
    await nc.flush();
    this.started = true;
  }

  /**
   * An evaluation request (EvaluatorController's handler), answered in arrival order, one at a time (evaluations
   * share the model's sessions). `subject` is the request's concrete subject (its round).
   */
  answer(request: unknown, subject: string): Promise<EvalReply> {
    const jobId = this.opts.spec.job.id ?? '';
    const w = this.#work;
    if (!w) return Promise.resolve({ protocolVersion: PROTOCOL_VERSION, jobId, error: 'evaluator is not ready' });
    return new Promise<EvalReply>((resolve) => {
      this.#queue = this.#queue.then(async () => resolve(await this.#answer(w.ctx, w.nc, w.blobs, request, subject)));
    });
  }

  async #answer(
    ctx: JobContext,
    nc: NatsConnection,
    blobs: BlobStore,
    request: unknown,
    subject: string,
  ): Promise<EvalReply> {
    const round = Number(subject.split('.').at(-2));
    // Nest hands over the parsed payload; decodeMessage gives the same field-naming errors as for raw bytes.
    const bytes = new TextEncoder().encode(JSON.stringify(request ?? null));
    const decoded = decodeMessage(EvalRequestSchema, bytes, subject, { jobId: ctx.jobId, round });
    let reply: EvalReply;
    if (!decoded.ok) {
      this.log.write('warn', 'eval request rejected', { reason: decoded.error.message });
      reply = { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, error: decoded.error.message };
    } else {
      try {
        const t0 = performance.now();
        const rows = await this.#rows(ctx, blobs, decoded.value);
        const durationMs = Math.round(performance.now() - t0);
        reply = { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, round, rows };
        this.#progress.evals = [...this.#progress.evals.filter((e) => e.round !== round), { round, rows }];
        // The request's round counts completed rounds: this evaluated the result of round `round - 1`.
        this.metrics.round.set(round - 1);
        const all = rows.filter((r) => r.client === (this.#owner ? OWNER_ROW : 'all'));
        publishMessage(nc, evaluatedSubject(ctx.jobId, round), EvalResultSchema, {
          protocolVersion: PROTOCOL_VERSION,
          jobId: ctx.jobId,
          round,
          scores: decoded.value.modes.map((mode, i) => ({
            mode,
            loss: all[i]!.testLoss,
            examples: all[i]!.items,
            tokens: all[i]!.tokens,
            metrics: { accuracy: all[i]!.accuracy },
          })),
          durationMs,
        });
        this.log.info('evaluated', {
          round,
          durationMs,
          all: all.map((r) => ({ method: r.method, loss: r.testLoss, accuracy: r.accuracy })),
        });
      } catch (e) {
        this.log.write('error', 'evaluation failed', { round, error: (e as Error).message });
        reply = { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, error: (e as Error).message };
      }
    }
    return reply;
  }

  async stop(): Promise<void> {
    this.started = false;
    for (const s of this.#subs) s.unsubscribe();
    this.#subs = [];
    // The accepted requests first (their replies go out on the transport's connection), then the transport.
    await this.#queue;
    for (const t of this.transports) await t.close();
    await this.#queue;
    this.#work = undefined;
    // The connection is the module's: NatsConnectionLifecycle drains it when the app closes.
    await this.jobContext.close();
  }
}

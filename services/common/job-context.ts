/**
 * The job context of a distributed service: the job plan (libs/fedbiot plan.ts, the same the standalone job runs)
 * plus the model and the data this service holds. Every service of a job builds it from the same JobSpec, so all
 * four compute exactly what the standalone job computes (same split, LoRA specs, initial LoRAs, seeds and streams).
 */
import { CausalLM, type LoraWeights, defaultCacheRoot } from '../../libs/model/src/index.js';
import {
  loadFederation,
  type FederationData,
  type LoadFederationOptions,
  type JobSpec,
  METHOD_TABLE,
  initialLoras as planInitialLoras,
  modelLoadOptions,
  planJob,
  streamSeed as planStreamSeed,
  type JobPlan,
  type ModelSplit,
  checkPackageSplit,
  loadEmulatorPackage,
} from '../../libs/fedbiot/src/index.js';

/** Everything a service derives from the job spec (the plan) and what it holds; identical in every service of a job. */
export interface JobContext extends JobPlan {
  /** The protocol job id (spec.job.id). */
  readonly jobId: string;
  /** The full model on the owner's side; the emulator package (numbered like the full model) at a client. */
  readonly lm: CausalLM;
  readonly data: FederationData;
}

/** The distributed runtime runs a method that aligns the emulator every round (FedBiOT) under a job id. */
function checkDistributed(spec: JobSpec): string {
  if (METHOD_TABLE[spec.job.method].alignment !== 'per-round')
    throw new Error(`job.method: the distributed runtime runs fedbiot only, not ${spec.job.method}`);
  if (!spec.job.id)
    throw new Error('job.id: required by the distributed runtime (it names the NATS subjects, streams and buckets)');
  return spec.job.id;
}

/** The job's split of a model of `numLayers` layers (the plan's). */
export function jobSplit(spec: JobSpec, numLayers: number): ModelSplit {
  return planJob(spec, numLayers).split;
}

async function contextFrom(
  spec: JobSpec,
  lm: CausalLM,
  plan: JobPlan,
  where: string,
  opts: LoadFederationOptions,
): Promise<JobContext> {
  const jobId = checkDistributed(spec);
  if (!lm.tokenizer) throw new Error(`${where} has no tokenizer.json`);
  const data = await loadFederation(spec, lm.tokenizer, defaultCacheRoot(), opts);
  return { ...plan, jobId, lm, data };
}

/**
 * The model owner's services (aggregator, server-alignment, evaluator): loads the full model and the federation
 * for `spec`, as runJob does for its method. Only method `fedbiot` runs distributed; the baselines stay standalone.
 * `opts` says which data the calling service holds (loadFederation's `parts`).
 */
export async function openJobContext(spec: JobSpec, opts: LoadFederationOptions = {}): Promise<JobContext> {
  checkDistributed(spec);
  const lm = await CausalLM.load(spec.model.checkpoint, modelLoadOptions(spec));
  const plan = planJob(spec, lm.config.numLayers);
  return contextFrom(spec, lm, plan, `model.checkpoint: ${spec.model.checkpoint}`, opts);
}

/**
 * A model owner's service's job context as a lazy provider (JOB_CONTEXT, services/common/providers.ts), opened the
 * way JobStores are: nothing loads while the module resolves (the HTTP shell answers /health/live meanwhile); the
 * role's start() calls open(), which loads the model and the service's data (`opts`, loadFederation's `parts`) once
 * and remembers them; a failed open is forgotten, so the next one tries again. close() frees the model (the role's
 * stop(), after its work finished; JobContextLifecycle again when the app closes, for a start that failed).
 */
export class LazyJobContext {
  #ctx: Promise<JobContext> | undefined;

  constructor(
    readonly spec: JobSpec,
    readonly opts: LoadFederationOptions = {},
  ) {}

  /** The context, loaded on the first call. */
  open(): Promise<JobContext> {
    if (this.#ctx) return this.#ctx;
    const ctx: Promise<JobContext> = openJobContext(this.spec, this.opts).catch((e: unknown) => {
      if (this.#ctx === ctx) this.#ctx = undefined;
      throw e;
    });
    return (this.#ctx = ctx);
  }

  /** Frees the model, if loaded (after a load in progress); idempotent. A later open() loads it again. */
  async close(): Promise<void> {
    const ctx = this.#ctx;
    this.#ctx = undefined;
    const loaded = await ctx?.catch(() => undefined);
    await loaded?.lm.release();
  }
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
  const { lm, manifest } = await loadEmulatorPackage(packageDir, { ...modelLoadOptions(spec), verify: false });
  try {
    const plan = planJob(spec, manifest.source.numLayers);
    checkPackageSplit(manifest, plan.split, packageDir);
    return await contextFrom(spec, lm, plan, `emulator package ${packageDir}`, opts);
  } catch (e) {
    await lm.release();
    throw e;
  }
}

/** The job's initial adapter and emulator LoRA on this service's model (plan.ts). */
export function initialLoras(ctx: JobContext): { adapter: LoraWeights; emulator: LoraWeights } {
  return planInitialLoras(ctx, ctx.lm);
}

/** Seed of a client's example stream (plan.ts), for a client of this service's federation. */
export function streamSeed(ctx: JobContext, clientId: string): number {
  const client = ctx.data.clients.find((c) => c.id === clientId);
  if (!client) throw new Error(`client ${clientId} is not in the federation ${ctx.data.source}`);
  return planStreamSeed(ctx.spec, client);
}

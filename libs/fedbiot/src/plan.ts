/**
 * The job plan: everything a run derives from its job spec, derived once. The standalone job (job.ts) and every
 * distributed service (services/common/job-context.ts) build the same plan from the same spec, so they compute the
 * same split, LoRA specs, initial LoRAs, seeds, client, alignment and coordinator settings, and pool scores alike.
 *
 * A run is the base model's evaluation, then its stages: the job's method ('main'), then the baselines it enables
 * (METHOD_TABLE / BASELINES_OF say which and how each trains).
 */
import type { CausalLM, LoraWeights, LoraSpec } from '../../model/src/index.js';
import { aggregationSettingsFor, type CoordinatorSettings } from './coordinator.js';
import { clientStreamSeed, type ClientData } from './federation.js';
import type { JobSpec } from './job-spec.js';
import { METHOD_TABLE, alignmentSteps, methodsRun, type Method, type MethodRow } from './methods.js';
import {
  clientSettingsFor,
  initialLora,
  loraSpecs,
  type AlignmentSettings,
  type ClientSettings,
  type EvalScores,
} from './roles.js';
import { clientTrainingSeed } from './seeds.js';
import { splitModel, type ModelSplit } from './split.js';

/** One method run inside a job: the job's method or one of its baselines. */
export interface Stage {
  readonly method: Method;
  readonly role: 'main' | 'baseline';
  /** The stage's name in metrics.jsonl (`phase`) and in JobOptions.afterCheckpoint: 'main', or the baseline's method. */
  readonly label: string;
  /**
   * Folder under the run's checkpoints/ holding this stage's checkpoints: '' for the job's method (a run's
   * checkpoints are its method's), the method's name for a baseline (checkpoints/<method>/round-N).
   */
  readonly checkpoints: string;
  readonly federated: boolean;
  /** Layers a client trains on: the split's client layers (emulator + adapter), or every layer (full model). */
  readonly clientLayers: readonly number[];
  /** Whether clients train with the emulator LoRA frozen in (the emulator) or without it (the full model). */
  readonly withEmulator: boolean;
  /** Emulator alignment steps before round 0 and after each round (both 0: no alignment server). */
  readonly preAlignSteps: number;
  readonly alignStepsPerRound: number;
  /** Whether a round's broadcast carries the emulator LoRA (it changes every round only under per-round alignment). */
  readonly broadcastEmulator: boolean;
  /** Result rows and the model each is evaluated on. */
  readonly rows: readonly MethodRow[];
}

export interface JobPlan {
  readonly spec: JobSpec;
  /** Layers of the full model. */
  readonly numLayers: number;
  /** Emulator and adapter layers, shared by every stage (a baseline trains the job method's adapter layers). */
  readonly split: ModelSplit;
  readonly specs: { readonly adapter: LoraSpec; readonly emulator: LoraSpec };
  readonly clientSettings: ClientSettings;
  /** The alignment server's settings (the emulator LoRA's training on public data). */
  readonly alignment: AlignmentSettings;
  /** Initialisation seeds of the adapter and emulator LoRA. */
  readonly seeds: { readonly adapter: number; readonly emulator: number };
  /** The stages in the order they run; stages[0] is the job's method. */
  readonly stages: readonly Stage[];
}

/** The plan of `spec` on a model of `numLayers` layers. */
export function planJob(spec: JobSpec, numLayers: number): JobPlan {
  const method = spec.job.method;
  const split = splitModel({
    numLayers,
    adapterBottom: METHOD_TABLE[method].bottomAdapter ? spec.split.adapterBottom : 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
  const stage = (m: Method, role: Stage['role']): Stage => {
    const t = METHOD_TABLE[m];
    const steps = alignmentSteps(m, spec.alignment, spec.baselines.oneShotAlignSteps);
    return {
      method: m,
      role,
      label: role === 'main' ? 'main' : m,
      checkpoints: role === 'main' ? '' : m,
      federated: t.federated,
      clientLayers: t.clientModel === 'full' ? Array.from({ length: numLayers }, (_, i) => i) : split.clientLayers,
      withEmulator: t.clientModel === 'emulator',
      preAlignSteps: steps.pre,
      alignStepsPerRound: steps.perRound,
      broadcastEmulator: t.alignment === 'per-round',
      rows: t.rows,
    };
  };
  return {
    spec,
    numLayers,
    split,
    specs: loraSpecs(split, spec.lora, spec.alignment.emulatorLora),
    clientSettings: clientSettingsFor(spec),
    alignment: {
      lambda: spec.alignment.lambda,
      mu: spec.alignment.mu,
      lr: spec.alignment.lr,
      batchSize: spec.alignment.batchSize,
      seq: spec.data.maxLength,
      seed: spec.job.seed,
    },
    seeds: { adapter: spec.job.seed + 1, emulator: spec.job.seed + 2 },
    stages: methodsRun(method, spec.baselines).map((m, i) => stage(m, i === 0 ? 'main' : 'baseline')),
  };
}

/** How the job's model loads (CausalLM.load, loadEmulatorPackage): provider, threads, weight and activation dtypes. */
export function modelLoadOptions(spec: JobSpec): {
  provider: JobSpec['model']['provider'];
  threads?: number;
  weightsDtype?: NonNullable<JobSpec['model']['weightsDtype']>;
  activations?: NonNullable<JobSpec['model']['activations']>;
} {
  return {
    provider: spec.model.provider,
    ...(spec.model.threads ? { threads: spec.model.threads } : {}),
    ...(spec.model.weightsDtype ? { weightsDtype: spec.model.weightsDtype } : {}),
    ...(spec.model.activations ? { activations: spec.model.activations } : {}),
  };
}

/** The job's initial adapter and emulator LoRA on `lm` (the full model, or a client's emulator package). */
export function initialLoras(
  plan: Pick<JobPlan, 'specs' | 'seeds'>,
  lm: CausalLM,
): { adapter: LoraWeights; emulator: LoraWeights } {
  return {
    adapter: initialLora(plan.specs.adapter, lm, plan.seeds.adapter),
    emulator: initialLora(plan.specs.emulator, lm, plan.seeds.emulator),
  };
}

/** Local-training seed (LoRA dropout masks) of `clientId` in `round` (seeds.ts). */
export function clientSeed(spec: JobSpec, round: number, clientId: string): number {
  return clientTrainingSeed(spec.job.seed, round, clientId);
}

/** Seed of a client's training-example stream. */
export function streamSeed(spec: JobSpec, client: Pick<ClientData, 'index'>): number {
  return clientStreamSeed(spec.job.seed, client);
}

/**
 * The round coordinator's settings for `stage` over the federation's `clientIds`; `aggregate` replaces FedAvg
 * (privacy-aggregation.ts).
 */
export function coordinatorSettings(
  plan: JobPlan,
  stage: Stage,
  clientIds: readonly string[],
  aggregate?: CoordinatorSettings['aggregate'],
): CoordinatorSettings {
  const { spec } = plan;
  return {
    rounds: spec.job.rounds,
    clientIds,
    perRound: spec.clients.perRound,
    seed: spec.job.seed,
    preAlignSteps: stage.preAlignSteps,
    alignStepsPerRound: stage.alignStepsPerRound,
    ...aggregationSettingsFor(spec, plan.clientSettings),
    evalEvery: spec.eval.every,
    broadcastEmulator: stage.broadcastEmulator,
    ...(aggregate ? { aggregate } : {}),
  };
}

/** Mean of per-client scores weighted by their tokens (loss) and items (accuracy): the pooled 'all' row. */
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

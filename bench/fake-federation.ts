/**
 * The aggregator side of a fake federation (bench/scale.ts, bench/soak.ts, test/services/hostile-nats.test.ts): the
 * real rounds (runRounds over natsRoundPorts) on a job whose clients are simulated (bench/soak-clients.ts) and which
 * runs no alignment and no evaluation. Here: the job's ports context and initial LoRAs, the aggregator's stores, and
 * the round settings.
 */
import {
  aggregationSettingsFor,
  clientSettingsFor,
  loraSpecs,
  splitModel,
  updateByteLimits,
  type JobSpec,
  type CoordinatorSettings,
} from '../libs/fedbiot/src/index.js';
import { initLora, type LoraWeights, type ModelConfig } from '../libs/model/src/index.js';
import {
  BlobStore,
  StateStore,
  WorkQueue,
  blobBucketName,
  stateBucketName,
  updateBucketName,
  type BlobRef,
} from '../libs/protocol/src/index.js';
import type { NatsConnection } from '@nats-io/transport-node';
import type { PortsContext } from '../services/common/ports-nats.js';

/** A fake federation's job: its ports context (split of `cfg`, LoRA specs, client settings) and initial LoRAs. */
export interface FakeJob {
  ctx: PortsContext;
  adapter0: LoraWeights;
  emulator0: LoraWeights;
}

/** The job `spec` (id `jobId`) on a model of config `cfg`: the adapter initialised with seed 1, the emulator 2. */
export function fakeJob(jobId: string, spec: JobSpec, cfg: ModelConfig): FakeJob {
  const split = splitModel({
    numLayers: cfg.numLayers,
    adapterBottom: 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
  const ctx: PortsContext = {
    jobId,
    spec,
    specs: loraSpecs(split, spec.lora),
    clientSettings: clientSettingsFor(spec),
  };
  return {
    ctx,
    adapter0: { spec: ctx.specs.adapter, tensors: initLora(ctx.specs.adapter, cfg, 1) },
    emulator0: { spec: ctx.specs.emulator, tensors: initLora(ctx.specs.emulator, cfg, 2) },
  };
}

/** The aggregator's stores of a fake federation, and the clients' update buckets. */
export interface FakeAggregatorStores {
  blobs: BlobStore;
  state: StateStore;
  queue: WorkQueue;
  /** A stand-in for the emulator package manifest (the fake clients never read it). */
  model: BlobRef;
  buckets: string[];
}

/**
 * Opens the job's blob store, state KV and work queue on `nc` (in server `storage`), and creates each client's
 * update bucket with the spec's byte limits for updates of `updateBytes`.
 */
export async function openFakeAggregatorStores(
  nc: NatsConnection,
  ctx: PortsContext,
  clientIds: readonly string[],
  updateBytes: number,
  storage?: 'file' | 'memory',
): Promise<FakeAggregatorStores> {
  const { jobId } = ctx;
  const blobs = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage });
  const limits = updateByteLimits(ctx.spec, updateBytes);
  const buckets = clientIds.map((c) => updateBucketName(jobId, c));
  for (const b of buckets) await blobs.ensureBucket(b, limits);
  const state = await StateStore.open(nc, { bucket: stateBucketName(jobId) });
  const queue = await WorkQueue.open(nc, { jobId, storage, logger: { warn: () => {} } });
  const model = await blobs.put(new TextEncoder().encode('stands for the emulator package manifest'));
  return { blobs, state, queue, model, buckets };
}

/** runRounds' settings for a fake federation: every client in every round, no alignment, one evaluation at the end. */
export const fakeRoundSettings = (
  { spec, clientSettings }: PortsContext,
  rounds: number,
  clientIds: string[],
): CoordinatorSettings => ({
  rounds,
  clientIds,
  perRound: { count: clientIds.length },
  seed: spec.job.seed,
  preAlignSteps: 0,
  alignStepsPerRound: 0,
  evalEvery: rounds,
  broadcastEmulator: true,
  ...aggregationSettingsFor(spec, clientSettings),
});

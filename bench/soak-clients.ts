/**
 * Lightweight simulated clients for the soak bench and the hostile-client NATS test: a trainer replica that does
 * the real trainer's NATS steps (broadcast get, update blob put into the client's own bucket, KV update, publish,
 * ack) but "trains" in 0 ms, returning the broadcast adapter plus small deterministic noise (a function of client,
 * round and broadcast only, so a redelivered task gives the same update and a disturbed run the same answer).
 * A client may be told to misbehave as issue 17's probes did.
 *
 * Run as a process (`node dist/bench/soak-clients.js <config.json>`), a replica can be SIGKILLed mid-task: its
 * task is redelivered to another replica after ackWait.
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import type { LoraWeights } from '../libs/model/src/index.js';
import { updateKey, type PortsContext } from '../services/common/ports-nats.js';
import { getBroadcast, putLora } from '../services/common/lora-blobs.js';
import {
  BlobStore,
  ClientUpdateSchema,
  PROTOCOL_VERSION,
  StateStore,
  WorkQueue,
  blobBucketName,
  connectTransport,
  publishMessage,
  stateBucketName,
  updateBucketName,
  updateSubject,
  type BlobRef,
  type Consumption,
  objectDigest,
  writeObjectMeta,
} from '../libs/protocol/src/index.js';

/** issue 17's attacks: weights x1e4, tokens 2^53-1, an update ref to a 1 GiB object. */
export type Behaviour = 'honest' | 'scaled' | 'tokens' | 'huge-ref';

/** What an honest simulated client reports per round. */
export const FAKE_COUNTS = { examples: 8, tokens: 512 } as const;

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/**
 * `l` plus uniform noise in [-a, a) from a xorshift32 stream seeded by `seed`: cheap, so the fake trainers spend no
 * time "training", and deterministic.
 */
export function plusUniformNoise(l: LoraWeights, seed: number, a: number): LoraWeights {
  let x = seed >>> 0 || 1;
  const tensors = new Map<string, Float32Array>();
  for (const [name, t] of l.tensors) {
    const out = new Float32Array(t.length);
    for (let i = 0; i < t.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = t[i]! + a * ((x >>> 0) / 2 ** 31 - 1);
    }
    tensors.set(name, out);
  }
  return { spec: l.spec, tensors };
}

/** The simulated local training: the broadcast plus uniform noise in [-1e-3, 1e-3), seeded by client and round. */
export const fakeLocal = (adapter: LoraWeights, round: number, clientId: string): LoraWeights =>
  plusUniformNoise(adapter, fnv1a(clientId) ^ Math.imul(round + 1, 0x9e3779b1), 1e-3);

/** A meta entry in the client's own bucket that announces a 1 GiB object (no chunk is stored). */
async function hugeRef(nc: NatsConnection, jobId: string, clientId: string, round: number): Promise<BlobRef> {
  const bucket = updateBucketName(jobId, clientId);
  const sha256 = 'ab'.repeat(32);
  const name = `huge-${round}`;
  await writeObjectMeta(jetstream(nc), {
    name,
    bucket,
    nuid: nuid.next(),
    size: 2 ** 30,
    chunks: 1024,
    digest: objectDigest(sha256),
    mtime: new Date().toISOString(),
    deleted: false,
    options: { max_chunk_size: 1 << 20 },
  });
  return { bucket, name, sha256, bytes: 2 ** 30 };
}

export interface FakeTrainerOptions {
  readonly behaviour?: (clientId: string) => Behaviour;
  /** Redelivery after a killed replica (ms). */
  readonly ackWaitMs?: number;
  /** Called after each published update (the soak counts them). */
  readonly onUpdate?: (round: number, clientId: string) => void;
  /** Called once a task's broadcast is fetched (the scale bench times the fan-out by it). */
  readonly onFetched?: (round: number, clientId: string) => void;
  /** The work queue's warnings (dropped by default). */
  readonly warn?: (msg: string) => void;
}

/** One pooled trainer replica on `nc`: pulls any client's task. */
export async function startFakeTrainer(
  ctx: PortsContext,
  nc: NatsConnection,
  opts: FakeTrainerOptions = {},
): Promise<Consumption> {
  const jobId = ctx.jobId;
  const blobs = await BlobStore.open(nc, { bucket: blobBucketName(jobId) });
  const state = await StateStore.open(nc, { bucket: stateBucketName(jobId) });
  const queue = await WorkQueue.open(nc, { jobId, logger: { warn: opts.warn ?? (() => {}) } });
  return queue.consume(
    async (task) => {
      const { round, clientId } = task;
      const behaviour = opts.behaviour?.(clientId) ?? 'honest';
      const { adapter } = await getBroadcast(blobs, task, ctx.specs);
      opts.onFetched?.(round, clientId);
      let local = fakeLocal(adapter, round, clientId);
      if (behaviour === 'scaled')
        local = { spec: local.spec, tensors: new Map([...local.tensors].map(([k, v]) => [k, v.map((x) => x * 1e4)])) };
      const ref =
        behaviour === 'huge-ref'
          ? await hugeRef(nc, jobId, clientId, round)
          : await putLora(blobs, local, { bucket: updateBucketName(jobId, clientId) });
      const update = {
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        round,
        clientId,
        adapterLora: ref,
        examples: FAKE_COUNTS.examples,
        tokens: behaviour === 'tokens' ? Number.MAX_SAFE_INTEGER : FAKE_COUNTS.tokens,
        meanLoss: 1,
        steps: ctx.clientSettings.localSteps,
        durationMs: 0,
      } as const;
      await state.put(updateKey(round, clientId), ClientUpdateSchema, update);
      publishMessage(nc, updateSubject(jobId, round, clientId), ClientUpdateSchema, update);
      await nc.flush();
      opts.onUpdate?.(round, clientId);
    },
    { ackWaitMs: opts.ackWaitMs ?? 30_000 },
  );
}

/** What a replica process is started with (a JSON file). */
export interface ReplicaConfig {
  readonly natsUrl: string;
  readonly ctx: PortsContext;
  readonly ackWaitMs: number;
}

// As a process: one replica until killed.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const cfg = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as ReplicaConfig;
  // Reconnect forever and pull again when a pull loop ends (a paused broker times requests out): the soak measures
  // the aggregator path, not a replica giving up (services/client-trainer owns that behaviour).
  const nc = await connectTransport(cfg.natsUrl, {
    timeoutMs: 10_000,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  for (;;) {
    const c = await startFakeTrainer(cfg.ctx, nc, { ackWaitMs: cfg.ackWaitMs }).catch(() => null);
    if (c) await c.done;
    await new Promise((r) => setTimeout(r, 500));
  }
}

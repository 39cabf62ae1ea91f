/**
 * Messaging overhead of a distributed round: the real aggregator path (runRounds over natsRoundPorts: plan, blob
 * puts, work-queue tasks, update collection, getting and checking the updates, FedAvg, the alignment request hop,
 * the KV checkpoint) on the real NATS (NATS_URL, default nats://127.0.0.1:4222), with trainers and an alignment
 * server that do every NATS step of the real services (KV stream state, blob gets, update blob put, KV update,
 * publish, ack; adapter get, emulator and AdamW-state puts, KV state) but train for 0 ms, returning correctly
 * sized random LoRA tensors. What a round then takes is its time outside training.
 *
 * That time is set against the round's training time, K local steps x the measured client step (clients train in
 * parallel, one replica each): the demo model's step is measured here; SmolLM-135M's comes from
 * bench/results/model.json (one row per machine / provider there) and the FedBiOT client step of
 * bench/results/perf-ours.json. Alignment compute is left out of the round
 * time, so the share is an upper bound. Rounds 0 (consumer creation) and the last (it also evaluates) are not
 * counted; the median of the others is reported.
 *
 * `npm run bench -- messaging [--rounds 16] [--clients 3] [--steps K]` writes bench/results/messaging.json.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  runRounds,
  type RoundPorts,
  resolveJobSpec,
  clientSettingsFor,
  loraSpecs,
  splitModel,
} from '../libs/fedbiot/src/index.js';
import { natsRoundPorts, updateKey, type PortsContext } from '../services/common/ports-nats.js';
import { getBroadcast, getLora, putLora } from '../services/common/lora-blobs.js';
import {
  CausalLM,
  type LoraWeights,
  parseModelConfig,
  readModelConfig,
  type ModelConfig,
  LoraTrainer,
  initLora,
} from '../libs/model/src/index.js';
import {
  BlobStore,
  ClientUpdateSchema,
  JOB_STATE_KEY,
  JobStateSchema,
  PROTOCOL_VERSION,
  StateStore,
  WorkQueue,
  AlignReplySchema,
  AlignRequestSchema,
  alignSubject,
  blobBucketName,
  connectTransport,
  decodeMessage,
  deleteJobResources,
  encodeMessage,
  encodeTensors,
  publishMessage,
  stateBucketName,
  updateSubject,
  type Consumption,
} from '../libs/protocol/src/index.js';
import { ALIGN_PENDING_KEY, AlignPendingSchema, AlignStateSchema } from '../services/server-alignment/alignment.js';
import { StreamStateSchema } from '../services/client-trainer/trainer.js';
import { argOf, machine, printTable, time, writeResults } from './common.js';
import { SMOLLM_135M, randomBatch } from './model.js';
import { plusUniformNoise } from './soak-clients.js';

const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';

/** Median of the counted rounds of one simulated job. */
interface Measured {
  readonly messagingMs: number;
  /** Inside it: trainClients (plan, tasks, trainers' NATS steps, collection, update gets). */
  readonly trainPortMs: number;
  /** Inside it: the alignment request hop. */
  readonly alignPortMs: number;
  /** Blob payload bytes read / written by all parties per round. */
  readonly bytesDown: number;
  readonly bytesUp: number;
  /** Bytes published on all connections per round (messages, blob chunks, JetStream API), from nc.stats(). */
  readonly wireBytes: number;
  readonly adapterBytes: number;
  readonly emulatorBytes: number;
}

const median = (xs: readonly number[]): number => {
  const s = xs.toSorted((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** The fake trainers' "training": uniform noise in [-1e-3, 1e-3) (bench/soak-clients.ts). */
const noisy = (l: LoraWeights, seed: number): LoraWeights => plusUniformNoise(l, seed, 1e-3);

const loraBytes = (l: LoraWeights): number => [...l.tensors.values()].reduce((s, t) => s + t.byteLength, 0);

/** The spec-derived context of a job on `cfg` with the default split and LoRA (r=8 on q,v). */
function portsContext(jobId: string, cfg: ModelConfig, clients: number, localSteps: number): PortsContext {
  const spec = resolveJobSpec(
    {
      job: { id: jobId, seed: 1, rounds: 1 },
      clients: { localSteps },
      // Generous: a fake round never comes near it; a stuck one fails the benchmark instead of hanging.
      aggregation: { quorum: clients, deadlineMs: 60_000 },
    },
    'messaging bench',
  );
  const split = splitModel({
    numLayers: cfg.numLayers,
    adapterBottom: 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
  const specs = loraSpecs(split, spec.lora);
  const clientSettings = clientSettingsFor(spec);
  return { jobId, spec, specs, clientSettings };
}

/** A trainer replica that does the real trainer's NATS steps and trains for 0 ms. */
async function fakeTrainer(ctx: PortsContext, nc: NatsConnection, blobs: BlobStore): Promise<Consumption> {
  const state = await StateStore.open(nc, { bucket: stateBucketName(ctx.jobId) });
  const queue = await WorkQueue.open(nc, { jobId: ctx.jobId, logger: { warn: () => {} } });
  return queue.consume(
    async (task) => {
      const { round, clientId } = task;
      const key = `stream.${clientId}`;
      await state.get(key, StreamStateSchema);
      // As the real trainer.
      const { adapter } = await getBroadcast(blobs, task, ctx.specs);
      const ref = await putLora(blobs, noisy(adapter, 7919 * round + clientId.length));
      const update = {
        protocolVersion: PROTOCOL_VERSION,
        jobId: ctx.jobId,
        round,
        clientId,
        adapterLora: ref,
        examples: 8,
        tokens: 512,
        meanLoss: 1,
        steps: ctx.clientSettings.localSteps,
        durationMs: 0,
      } as const;
      await state.put(updateKey(round, clientId), ClientUpdateSchema, update);
      publishMessage(nc, updateSubject(ctx.jobId, round, clientId), ClientUpdateSchema, update);
      await nc.flush();
      await state.put(key, StreamStateSchema, {
        protocolVersion: PROTOCOL_VERSION,
        clientId,
        round,
        before: null,
        after: { epoch: 0, pos: 8 * (round + 1) },
      });
    },
    { ackWaitMs: 30_000 },
  );
}

/**
 * An alignment server that does the real one's NATS steps in 0 ms, in its order: KV `align.pending`, adapter get,
 * emulator put, reply, then AdamW m, v put and KV `align` (off the reply path).
 */
async function fakeAlignment(
  ctx: PortsContext,
  nc: NatsConnection,
  blobs: BlobStore,
  emulator0: LoraWeights,
): Promise<() => Promise<void>> {
  const kv = await StateStore.open(nc, { bucket: stateBucketName(ctx.jobId) });
  let emulator = emulator0;
  let chain = Promise.resolve();
  const sub = nc.subscribe(alignSubject(ctx.jobId), {
    callback: (_err, msg) => {
      chain = chain.then(async () => {
        const req = decodeMessage(AlignRequestSchema, msg.data, msg.subject);
        if (!req.ok) throw req.error;
        // As the real server: the request is recorded, the emulator put and the reply sent; the AdamW state and the
        // KV record are written after the reply (the next request waits for them, the chain is sequential).
        await kv.put(ALIGN_PENDING_KEY, AlignPendingSchema, {
          protocolVersion: PROTOCOL_VERSION,
          call: req.value.call,
          adapterLora: req.value.adapterLora,
          steps: req.value.steps,
        });
        await getLora(blobs, req.value.adapterLora, ctx.specs.adapter);
        emulator = noisy(emulator, 104729 + req.value.call);
        const emulatorLora = await putLora(blobs, emulator);
        const stats = { loss: 1, l2: 0, kl: 1, steps: req.value.steps };
        const reply = {
          protocolVersion: PROTOCOL_VERSION,
          jobId: ctx.jobId,
          call: req.value.call,
          emulatorLora,
          ...stats,
        };
        msg.respond(encodeMessage(AlignReplySchema, reply, 'align reply'));
        const moments = new Map(
          [...emulator.tensors].flatMap(([k, v]) => [
            [`optim.m.${k}`, { shape: [v.length], data: v }],
            [`optim.v.${k}`, { shape: [v.length], data: v.map((x) => x * x) }],
          ]),
        );
        const optimizer = await blobs.put(encodeTensors(moments));
        await kv.put('align', AlignStateSchema, {
          protocolVersion: PROTOCOL_VERSION,
          call: req.value.call,
          emulatorLora,
          optimizer,
          optimizerMeta: '{}',
          stream: { epoch: 0, pos: req.value.call },
          reply: stats,
        });
      });
    },
  });
  // The last call's state write runs after its reply: wait for it before the job's resources are deleted.
  return async () => {
    sub.unsubscribe();
    await chain;
  };
}

/** `f`, adding each call's wall time (ms) to a counter through `add`. */
function timed<A extends unknown[], R>(f: (...a: A) => Promise<R>, add: (ms: number) => void) {
  return async (...a: A): Promise<R> => {
    const t0 = performance.now();
    try {
      return await f(...a);
    } finally {
      add(performance.now() - t0);
    }
  };
}

/** Runs `rounds` rounds of the real aggregator path against fake trainers; returns the per-round medians. */
async function measureMessaging(
  name: string,
  cfg: ModelConfig,
  clients: number,
  rounds: number,
  localSteps: number,
): Promise<Measured> {
  const jobId = `bench-msg-${name}-${process.pid}-${Date.now().toString(36)}`;
  const ctx = portsContext(jobId, cfg, clients, localSteps);
  const clientIds = Array.from({ length: clients }, (_, i) => `c${i}`);
  const adapter0: LoraWeights = { spec: ctx.specs.adapter, tensors: initLora(ctx.specs.adapter, cfg, 1) };
  const emulator0: LoraWeights = { spec: ctx.specs.emulator, tensors: initLora(ctx.specs.emulator, cfg, 2) };
  // One connection per party, as separate processes would have.
  const conns: NatsConnection[] = [];
  const stores: BlobStore[] = [];
  const party = async (): Promise<{ nc: NatsConnection; blobs: BlobStore }> => {
    const nc = await connectTransport(NATS_URL);
    const blobs = await BlobStore.open(nc, { bucket: blobBucketName(jobId) });
    conns.push(nc);
    stores.push(blobs);
    return { nc, blobs };
  };
  const consumers: Consumption[] = [];
  let stopAlign: (() => Promise<void>) | undefined;
  try {
    const agg = await party();
    const state = await StateStore.open(agg.nc, { bucket: stateBucketName(jobId) });
    const queue = await WorkQueue.open(agg.nc, { jobId, logger: { warn: () => {} } });
    // Stands in for the emulator package's manifest ref that tasks carry (the package itself is fetched once per
    // replica, outside the rounds this bench times; `npm run bench -- package` measures that).
    const model = await agg.blobs.put(new TextEncoder().encode(`emulator package manifest of ${jobId}`));
    const al = await party();
    stopAlign = await fakeAlignment(ctx, al.nc, al.blobs, emulator0);
    for (let i = 0; i < clients; i++) {
      const t = await party();
      consumers.push(await fakeTrainer(ctx, t.nc, t.blobs));
    }
    const inner = natsRoundPorts(ctx, { nc: agg.nc, blobs: agg.blobs, queue, state, model, nextAlignCall: 0 });
    let trainMs = 0;
    let alignMs = 0;
    const ports: RoundPorts = {
      trainClients: timed(inner.trainClients, (ms) => (trainMs += ms)),
      align: timed(inner.align, (ms) => (alignMs += ms)),
      // The evaluator's reply is not part of a training round (it runs every N rounds, on its own compute).
      evaluate: async () => [],
    };
    const snapshot = () => ({
      t: performance.now(),
      trainMs,
      alignMs,
      down: stores.reduce((s, b) => s + b.stats.bytesDown, 0),
      up: stores.reduce((s, b) => s + b.stats.bytesUp, 0),
      wire: conns.reduce((s, c) => s + c.stats().outBytes, 0),
    });
    const marks: ReturnType<typeof snapshot>[] = [];
    await runRounds(
      ports,
      {
        rounds,
        clientIds,
        perRound: { count: clients },
        seed: 1,
        preAlignSteps: 5,
        alignStepsPerRound: 5,
        weighting: 'tokens',
        evalEvery: rounds,
        broadcastEmulator: true,
      },
      { round: 0, adapter: adapter0, emulator: emulator0, preAligned: false },
      {
        onEvent: () => {},
        // The real aggregator's checkpoint: both LoRAs as blobs (deduplicated by sha256) and the job record in KV.
        onCheckpoint: async (s) => {
          const a = await putLora(agg.blobs, s.adapter);
          const e = await putLora(agg.blobs, s.emulator);
          await state.put(JOB_STATE_KEY, JobStateSchema, {
            protocolVersion: PROTOCOL_VERSION,
            jobId,
            status: s.round >= rounds ? 'completed' : 'running',
            totalRounds: rounds,
            lastCompletedRound: s.round - 1,
            model,
            adapterLora: a,
            emulatorLora: e,
            message: null,
            updatedAt: Date.now(),
          });
          marks.push(snapshot());
        },
      },
    );
    // marks[0]: after pre-alignment; marks[r + 1]: after round r. Count rounds 1 .. rounds - 2.
    const per = (f: (a: ReturnType<typeof snapshot>, b: ReturnType<typeof snapshot>) => number): number =>
      median(marks.slice(2, rounds).map((m, i) => f(marks[i + 1]!, m)));
    return {
      messagingMs: per((a, b) => b.t - a.t),
      trainPortMs: per((a, b) => b.trainMs - a.trainMs),
      alignPortMs: per((a, b) => b.alignMs - a.alignMs),
      bytesDown: per((a, b) => b.down - a.down),
      bytesUp: per((a, b) => b.up - a.up),
      wireBytes: per((a, b) => b.wire - a.wire),
      adapterBytes: loraBytes(adapter0),
      emulatorBytes: loraBytes(emulator0),
    };
  } finally {
    await stopAlign?.();
    for (const c of consumers) await c.stop().catch(() => {});
    if (conns[0]) await deleteJobResources(conns[0], jobId).catch(() => {});
    for (const c of conns) await c.close();
  }
}

/** The demo model's client step here (B and T of the default job spec, adapter trainable, emulator frozen). */
async function demoStepMs(cfgDir: string, ctx: PortsContext, cfg: ModelConfig): Promise<number> {
  const tmp = mkdtempSync(join(tmpdir(), 'bench-messaging-'));
  const lm = await CausalLM.load(cfgDir, { cacheRoot: join(tmp, 'cache') });
  try {
    const split = splitModel({
      numLayers: cfg.numLayers,
      adapterBottom: 0,
      adapterTop: ctx.spec.split.adapterLayers,
      dropRate: ctx.spec.split.dropRate,
    });
    const B = ctx.clientSettings.batchSize;
    const T = ctx.clientSettings.seq;
    const trainer = await LoraTrainer.create(lm, {
      batch: B,
      seq: T,
      layers: split.clientLayers,
      trainable: { spec: ctx.specs.adapter, tensors: initLora(ctx.specs.adapter, cfg, 1) },
      frozen: [{ spec: ctx.specs.emulator, tensors: initLora(ctx.specs.emulator, cfg, 2) }],
      optimizer: { kind: 'adamw', lr: 5e-3, betas: [0.9, 0.95] },
    });
    const batch = randomBatch(B, T, cfg.vocabSize);
    return (await time(() => trainer.step([batch]), 5, 2)).median;
  } finally {
    await lm.release();
    rmSync(tmp, { recursive: true, force: true });
  }
}

interface StepRow {
  readonly ms_per_step: number;
  readonly provider: string;
  readonly threads: unknown;
  readonly machine: string;
}

export async function main(args: string[]): Promise<void> {
  const rounds = Number(argOf(args, 'rounds') ?? 16);
  const clients = Number(argOf(args, 'clients') ?? 3);
  if (!(rounds >= 3)) throw new Error('--rounds: at least 3 (the first and the last round are not counted)');
  const K = Number(argOf(args, 'steps') ?? resolveJobSpec({}, 'defaults').clients.localSteps);
  const rows: Record<string, unknown>[] = [];
  const common = { clients, local_steps: K, machine: machine(), date: new Date().toISOString() };
  const add = (c: string, m: Measured, stepMs: number, source: string): void => {
    const trainingMs = K * stepMs;
    const roundMs = trainingMs + m.messagingMs;
    rows.push({
      case: c,
      round_ms: +roundMs.toFixed(1),
      messaging_ms: +m.messagingMs.toFixed(1),
      share_pct: +((100 * m.messagingMs) / roundMs).toFixed(2),
      bytes_down: m.bytesDown,
      bytes_up: m.bytesUp,
      train_port_ms: +m.trainPortMs.toFixed(1),
      align_hop_ms: +m.alignPortMs.toFixed(1),
      other_ms: +(m.messagingMs - m.trainPortMs - m.alignPortMs).toFixed(1),
      wire_bytes: m.wireBytes,
      adapter_bytes: m.adapterBytes,
      emulator_bytes: m.emulatorBytes,
      step_ms: +stepMs.toFixed(1),
      step_source: source,
      ...common,
    });
  };

  const demoDir = join(process.cwd(), 'models', 'demo-llama');
  const demoCfg = await readModelConfig(join(demoDir, 'config.json'));
  console.log(`demo model: ${rounds} rounds x ${clients} clients over ${NATS_URL} ...`);
  const demo = await measureMessaging('demo', demoCfg, clients, rounds, K);
  const demoStep = await demoStepMs(demoDir, portsContext('bench-demo-step', demoCfg, clients, K), demoCfg);
  add('demo', demo, demoStep, 'measured here (cpu)');

  const smolCfg = parseModelConfig(SMOLLM_135M, 'smollm-135m-shape.json');
  console.log(`SmolLM-135M shape: ${rounds} rounds x ${clients} clients ...`);
  const smol = await measureMessaging('smollm', smolCfg, clients, rounds, K);
  const modelFile = join(process.cwd(), 'bench', 'results', 'model.json');
  const steps = existsSync(modelFile)
    ? (JSON.parse(readFileSync(modelFile, 'utf8')) as (StepRow & { case: string; task: string })[]).filter(
        (r) => r.case === 'smollm135m-client-top2' && r.task === 'train',
      )
    : [];
  if (steps.length === 0) console.warn(`no smollm135m-client-top2 rows in ${modelFile}: run npm run bench -- model`);
  for (const s of steps)
    add(
      `smollm135m ${s.provider}/${String(s.threads)} on ${s.machine.split(',')[0]}`,
      smol,
      s.ms_per_step,
      'bench/results/model.json',
    );

  // The FedBiOT client step itself (emulator + adapter), from the latest perf run: what a client's round trains.
  const perfFile = join(process.cwd(), 'bench', 'results', 'perf-ours.json');
  const clientSteps = existsSync(perfFile)
    ? (JSON.parse(readFileSync(perfFile, 'utf8')) as (StepRow & { case: string })[]).filter(
        (r) => r.case === 'smollm135m-client-step',
      )
    : [];
  for (const s of clientSteps)
    add(
      `smollm135m client step ${s.provider}/${String(s.threads)} on ${s.machine.split(',')[0]}`,
      smol,
      s.ms_per_step,
      'bench/results/perf-ours.json',
    );

  printTable(rows, [
    'case',
    'round_ms',
    'messaging_ms',
    'share_pct',
    'bytes_down',
    'bytes_up',
    'train_port_ms',
    'align_hop_ms',
    'other_ms',
    'step_ms',
  ]);
  console.log(`wrote ${writeResults('messaging', rows)}`);
}

/**
 * server-alignment: holds the AlignmentServer of the job (emulator LoRA, its AdamW state, the public-data stream)
 * and answers alignment requests one at a time. After each alignment the emulator, optimizer state and stream
 * position go to the blob store + KV (`align`), so a restarted server continues with the same state, and a repeated
 * request (same `call`) is answered from the stored result instead of aligning twice.
 */
import type { NatsConnection, Msg, Subscription } from '@nats-io/transport-node';
import { z } from 'zod';
import { stateFromTensors, stateToTensors } from '../../libs/engine/src/index.js';
import {
  BlobRefSchema,
  BlobStore,
  PROTOCOL_VERSION,
  StateStore,
  blobBucketName,
  connectTransport,
  decodeMessage,
  decodeTensors,
  encodeMessage,
  encodeTensors,
  stateBucketName,
} from '../../libs/protocol/src/index.js';
import type { JobSpec } from '../../libs/fedbiot/src/job-spec.js';
import {
  AlignRequestSchema,
  AlignReplySchema,
  alignSubject,
  getLora,
  initialLoras,
  openJobContext,
  putLora,
  type AlignReply,
  type AlignRequest,
  type JobContext,
} from '../../libs/fedbiot/src/ports-nats.js';
import { AlignmentServer } from '../../libs/fedbiot/src/roles.js';
import { JsonLogger, type LogRecord } from '../common/logger.js';
import { ServiceMetrics } from '../common/metrics.js';
import type { ServiceRole } from '../common/role.js';

/** KV `align`: the server's state after alignment call `call`, and that call's answer. */
export const AlignStateSchema = z.strictObject({
  protocolVersion: z.literal(PROTOCOL_VERSION),
  call: z.int().nonnegative(),
  emulatorLora: BlobRefSchema,
  optimizer: BlobRefSchema.nullable(),
  optimizerMeta: z.string().nullable(),
  stream: z.strictObject({ epoch: z.int().nonnegative(), pos: z.int().nonnegative() }),
  reply: z.strictObject({ loss: z.number(), l2: z.number(), kl: z.number(), steps: z.int().nonnegative() }),
});
export type AlignState = z.infer<typeof AlignStateSchema>;
const ALIGN_KEY = 'align';

export interface AlignmentOptions {
  readonly natsUrl: string;
  readonly spec: JobSpec;
  readonly logSink?: (r: LogRecord) => void;
}

export class ServerAlignment implements ServiceRole {
  readonly name = 'server-alignment';
  readonly log: JsonLogger;
  readonly metrics = new ServiceMetrics('server-alignment');
  #nc: NatsConnection | undefined;
  #ctx: JobContext | undefined;
  #sub: Subscription | undefined;
  #queue: Promise<void> = Promise.resolve();
  #ready = false;

  constructor(private readonly opts: AlignmentOptions) {
    this.log = new JsonLogger('server-alignment', opts.logSink);
  }

  ready(): boolean {
    return this.#ready;
  }

  async start(): Promise<void> {
    const ctx = (this.#ctx = await openJobContext(this.opts.spec));
    const nc = (this.#nc = await connectTransport(this.opts.natsUrl));
    const blobs = await BlobStore.open(nc, { bucket: blobBucketName(ctx.jobId) });
    this.metrics.trackBlobs(() => blobs.stats);
    const kv = await StateStore.open(nc, { bucket: stateBucketName(ctx.jobId) });
    const stored = (await kv.get(ALIGN_KEY, AlignStateSchema))?.value ?? null;
    const spec = ctx.spec;
    const emulator = stored
      ? await getLora(blobs, stored.emulatorLora, ctx.specs.emulator)
      : initialLoras(ctx).emulator;
    const server = new AlignmentServer(
      ctx.lm,
      ctx.split,
      ctx.specs,
      {
        lambda: spec.alignment.lambda,
        mu: spec.alignment.mu,
        lr: spec.alignment.lr,
        batchSize: spec.alignment.batchSize,
        seq: spec.data.maxLength,
        seed: spec.job.seed,
      },
      ctx.data.publicWindows,
      emulator,
      stored?.stream,
    );
    if (stored?.optimizer && stored.optimizerMeta) {
      const t = decodeTensors(await blobs.get(stored.optimizer), `${stored.optimizer.bucket}/${stored.optimizer.name}`);
      await server.importOptimizerState(
        stateFromTensors(stored.optimizerMeta, new Map([...t.tensors].map(([k, v]) => [k, Float32Array.from(v.data)]))),
      );
    }
    if (stored) this.log.info('resumed alignment state', { call: stored.call });
    let last = stored;
    const handle = async (req: AlignRequest): Promise<AlignReply> => {
      if (last && req.call === last.call)
        return {
          protocolVersion: PROTOCOL_VERSION,
          jobId: ctx.jobId,
          call: req.call,
          emulatorLora: last.emulatorLora,
          ...last.reply,
        };
      if (last && req.call < last.call)
        return {
          protocolVersion: PROTOCOL_VERSION,
          jobId: ctx.jobId,
          error: `call ${req.call} is older than the last alignment (${last.call})`,
        };
      const adapter = await getLora(blobs, req.adapterLora, ctx.specs.adapter);
      const t0 = performance.now();
      const stats = await server.align(adapter, req.steps);
      if (req.steps > 0) this.metrics.stepSeconds.observe((performance.now() - t0) / 1000 / req.steps);
      const emulatorLora = await putLora(blobs, server.emulator);
      const opt = server.exportOptimizerState();
      let optimizer = null;
      let optimizerMeta = null;
      if (opt) {
        const t = stateToTensors(opt, 'optim.');
        optimizer = await blobs.put(
          encodeTensors(new Map([...t.tensors].map(([k, v]) => [k, { shape: [v.length], data: v }]))),
        );
        optimizerMeta = t.meta;
      }
      const next: AlignState = {
        protocolVersion: PROTOCOL_VERSION,
        call: req.call,
        emulatorLora,
        optimizer,
        optimizerMeta,
        stream: server.streamState,
        reply: { ...stats },
      };
      await kv.put(ALIGN_KEY, AlignStateSchema, next);
      last = next;
      this.metrics.round.set(req.call);
      this.log.info('aligned', { call: req.call, steps: stats.steps, loss: stats.loss, l2: stats.l2, kl: stats.kl });
      return { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, call: req.call, emulatorLora, ...stats };
    };
    const subject = alignSubject(ctx.jobId);
    this.#sub = nc.subscribe(subject, {
      queue: 'server-alignment',
      callback: (err, msg: Msg) => {
        if (err) {
          this.log.write('error', 'subscription error', { subject, error: err.message });
          return;
        }
        // One alignment at a time, in arrival order: the emulator and optimizer are a single sequential state.
        this.#queue = this.#queue.then(async () => {
          const decoded = decodeMessage(AlignRequestSchema, msg.data, subject, { jobId: ctx.jobId });
          let reply: AlignReply;
          if (!decoded.ok) {
            this.log.write('warn', 'align request rejected', { reason: decoded.error.message });
            reply = { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, error: decoded.error.message };
          } else {
            try {
              reply = await handle(decoded.value);
            } catch (e) {
              this.log.write('error', 'alignment failed', { call: decoded.value.call, error: (e as Error).message });
              reply = { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, error: (e as Error).message };
            }
          }
          if (msg.reply) msg.respond(encodeMessage(AlignReplySchema, reply, msg.reply));
        });
      },
    });
    await nc.flush();
    this.#ready = true;
  }

  async stop(): Promise<void> {
    this.#ready = false;
    this.#sub?.unsubscribe();
    await this.#queue;
    const nc = this.#nc;
    this.#nc = undefined;
    if (nc) await nc.drain().catch(() => nc.close());
    await this.#ctx?.lm.release();
    this.#ctx = undefined;
  }
}

/**
 * server-alignment: holds the AlignmentServer of the job (emulator LoRA, its AdamW state, the public-data stream)
 * and answers alignment requests one at a time. A repeated request (same `call`) is answered from the stored result
 * instead of aligning twice.
 *
 * Durability without the optimizer upload on the round's critical path: before aligning call c the request is
 * recorded in KV (`align.pending`: call, adapter ref, steps); after aligning, the emulator blob is put and the reply
 * sent; only then are the AdamW state blob and the KV `align` record (state after call c) written, while the next
 * round trains. The next request waits for that write. A server that dies between the reply and the write restarts
 * from `align` = call c - 1 and re-runs call c from `align.pending` (same state, stream position and adapter, so the
 * same emulator) before answering anything, so every call's state is exact, never skipped or aligned twice.
 */
import { z } from 'zod';
import { stateFromTensors, stateToTensors } from '../../libs/engine/src/index.js';
import {
  AlignRequestSchema,
  BlobRefSchema,
  type BlobRef,
  PROTOCOL_VERSION,
  alignSubject,
  ownerBucketName,
  decodeMessage,
  decodeTensors,
  encodeTensors,
  type AlignReply,
  type AlignRequest,
} from '../../libs/protocol/src/index.js';
import { AlignmentServer } from '../../libs/fedbiot/src/index.js';
import type { LoadFederationOptions } from '../../libs/fedbiot/src/index.js';
import { initialLoras } from '../common/job-context.js';
import { getLora, putLora } from '../common/lora-blobs.js';
import { ServiceMetrics } from '../common/metrics.js';
import type { ServiceRole } from '../common/role.js';
import { RequestService, type RequestServiceDeps, type RequestServiceOptions } from '../common/request-service.js';

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

/** KV `align.pending`: the request being (or last) aligned, written before aligning; replayed on restart. */
export const AlignPendingSchema = z.strictObject({
  protocolVersion: z.literal(PROTOCOL_VERSION),
  call: z.int().nonnegative(),
  adapterLora: BlobRefSchema,
  steps: z.int().nonnegative(),
});
export type AlignPending = z.infer<typeof AlignPendingSchema>;
export const ALIGN_PENDING_KEY = 'align.pending';

export type AlignmentOptions = RequestServiceOptions;

/** The data server-alignment holds (its job context's, JOB_CONTEXT): the public corpus only, never client data. */
export const ALIGNMENT_DATA: LoadFederationOptions = { parts: ['public'] };

/** What ServerAlignmentModule injects (services/server-alignment/alignment.module.ts). */
export type AlignmentDeps = RequestServiceDeps;

/** The alignment service class: built by ServerAlignmentModule with its connection and stores injected. */
export class ServerAlignment extends RequestService implements ServiceRole {
  readonly name = 'server-alignment';
  readonly metrics = new ServiceMetrics('server-alignment');
  #queue: Promise<void> = Promise.resolve();
  #handle: ((req: AlignRequest) => Promise<{ reply: AlignReply; persist?: () => Promise<void> }>) | undefined;

  constructor(
    private readonly opts: AlignmentOptions,
    deps: AlignmentDeps,
  ) {
    super(opts, deps);
  }

  async start(): Promise<void> {
    // The injected job context (ALIGNMENT_DATA: the public corpus only), loaded here, after the HTTP shell started.
    const ctx = await this.jobContext.open();
    const blobs = await this.stores.blobs();
    this.metrics.trackBlobs(() => blobs.stats);
    await blobs.ensureBucket(ownerBucketName(ctx.jobId));
    const kv = await this.stores.state();
    const stored = (await kv.get(ALIGN_KEY, AlignStateSchema))?.value ?? null;
    const emulator = stored
      ? await getLora(blobs, stored.emulatorLora, ctx.specs.emulator)
      : initialLoras(ctx).emulator;
    const server = new AlignmentServer(
      ctx.lm,
      ctx.split,
      ctx.specs,
      // The plan's alignment settings, as the standalone job's (libs/fedbiot plan.ts).
      ctx.alignment,
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
    /** Optimizer blobs of the stored state and the one before it (see persist). */
    const keptOptimizers: BlobRef[] = stored?.optimizer ? [stored.optimizer] : [];
    /** Writes the state after `call` (AdamW blob + KV `align`); the emulator blob is already stored. */
    const persist = async (call: number, emulatorLora: AlignState['emulatorLora'], reply: AlignState['reply']) => {
      const opt = server.exportOptimizerState();
      let optimizer = null;
      let optimizerMeta = null;
      if (opt) {
        const t = stateToTensors(opt, 'optim.');
        // The owner bucket: optimizer moments are the model owner's, not broadcast to clients.
        optimizer = await blobs.put(
          encodeTensors(new Map([...t.tensors].map(([k, v]) => [k, { shape: [v.length], data: v }]))),
          { bucket: ownerBucketName(ctx.jobId) },
        );
        optimizerMeta = t.meta;
      }
      const next: AlignState = {
        protocolVersion: PROTOCOL_VERSION,
        call,
        emulatorLora,
        optimizer,
        optimizerMeta,
        stream: server.streamState,
        reply,
      };
      await kv.put(ALIGN_KEY, AlignStateSchema, next);
      // A restart resumes from the stored state's optimizer blob; the one before it is kept too, for a read of KV
      // that still returns the previous record (a replica catching up after a restart) and for tests that roll the
      // record back by one call. Older ones can never be read again: deleted once the new state is durable.
      // Content addressing can give two states one object (a call with 0 steps): that one is never deleted.
      if (optimizer) keptOptimizers.push(optimizer);
      while (keptOptimizers.length > 2) {
        const old = keptOptimizers.shift()!;
        if (keptOptimizers.some((k) => k.name === old.name)) continue;
        await blobs.delete(old).catch((e: unknown) =>
          this.log.write('warn', 'could not delete an old alignment optimizer blob', {
            blob: old.name,
            error: String(e),
          }),
        );
      }
      last = next;
    };
    /** Aligns `req` and stores the emulator; the caller persists the rest with `persist`. */
    const align = async (req: AlignPending) => {
      const adapter = await getLora(blobs, req.adapterLora, ctx.specs.adapter);
      const t0 = performance.now();
      const stats = await server.align(adapter, req.steps);
      if (req.steps > 0) this.metrics.stepSeconds.observe((performance.now() - t0) / 1000 / req.steps);
      const emulatorLora = await putLora(blobs, server.emulator);
      return { emulatorLora, reply: { loss: stats.loss, l2: stats.l2, kl: stats.kl, steps: stats.steps } };
    };

    const pending = (await kv.get(ALIGN_PENDING_KEY, AlignPendingSchema))?.value ?? null;
    const expected = stored ? stored.call + 1 : 0;
    if (pending && pending.call === expected) {
      // Died after answering (or while aligning) call `expected`, before its state was written: re-run it.
      const r = await align(pending);
      await persist(pending.call, r.emulatorLora, r.reply);
      this.log.info('replayed unpersisted alignment', { call: pending.call, emulator: r.emulatorLora.sha256 });
    } else if (pending && pending.call > expected)
      throw new Error(
        `KV ${ALIGN_PENDING_KEY}: call ${pending.call} is pending but the stored state is after call ${expected - 1}`,
      );

    const handle = async (req: AlignRequest): Promise<{ reply: AlignReply; persist?: () => Promise<void> }> => {
      if (last && req.call === last.call)
        return {
          reply: {
            protocolVersion: PROTOCOL_VERSION,
            jobId: ctx.jobId,
            call: req.call,
            emulatorLora: last.emulatorLora,
            ...last.reply,
          },
        };
      if (last && req.call < last.call)
        return {
          reply: {
            protocolVersion: PROTOCOL_VERSION,
            jobId: ctx.jobId,
            error: `call ${req.call} is older than the last alignment (${last.call})`,
          },
        };
      await kv.put(ALIGN_PENDING_KEY, AlignPendingSchema, {
        protocolVersion: PROTOCOL_VERSION,
        call: req.call,
        adapterLora: req.adapterLora,
        steps: req.steps,
      });
      const { emulatorLora, reply: stats } = await align(req);
      // Call c >= 1 aligns after round c - 1 (call 0 is the pre-alignment, before round 0).
      if (req.call > 0) this.metrics.round.set(req.call - 1);
      this.log.info('aligned', { call: req.call, steps: stats.steps, loss: stats.loss, l2: stats.l2, kl: stats.kl });
      return {
        reply: { protocolVersion: PROTOCOL_VERSION, jobId: ctx.jobId, call: req.call, emulatorLora, ...stats },
        persist: () => persist(req.call, emulatorLora, stats),
      };
    };
    this.#handle = handle;
    await this.conn.nc.flush();
    this.started = true;
  }

  /**
   * The alignment call (AlignmentController's handler): decodes and validates the request, aligns, and resolves with
   * the reply. One alignment at a time, in arrival order: the emulator and optimizer are a single sequential state,
   * so each call waits for the previous one, its state write included (which runs after the reply, off the round's
   * critical path).
   */
  answer(request: unknown): Promise<AlignReply> {
    const jobId = this.opts.spec.job.id ?? '';
    const handle = this.#handle;
    if (!handle)
      return Promise.resolve({ protocolVersion: PROTOCOL_VERSION, jobId, error: 'server-alignment is not ready' });
    const subject = alignSubject(jobId);
    return new Promise<AlignReply>((resolve) => {
      this.#queue = this.#queue.then(async () => {
        // Nest hands over the parsed payload; decodeMessage gives the same field-naming errors as for raw bytes.
        const decoded = decodeMessage(
          AlignRequestSchema,
          new TextEncoder().encode(JSON.stringify(request ?? null)),
          subject,
          {
            jobId,
          },
        );
        let after: (() => Promise<void>) | undefined;
        if (!decoded.ok) {
          this.log.write('warn', 'align request rejected', { reason: decoded.error.message });
          resolve({ protocolVersion: PROTOCOL_VERSION, jobId, error: decoded.error.message });
          return;
        }
        try {
          const r = await handle(decoded.value);
          after = r.persist;
          resolve(r.reply);
        } catch (e) {
          this.log.write('error', 'alignment failed', { call: decoded.value.call, error: (e as Error).message });
          resolve({ protocolVersion: PROTOCOL_VERSION, jobId, error: (e as Error).message });
        }
        // Still inside the queue: the next request waits until this state is stored.
        if (after) await this.#persistOrStop(after, decoded.value.call);
      });
    });
  }

  /**
   * Runs a deferred state write. On failure the in-memory state is ahead of KV and `align.pending` no longer
   * describes a single missing call once the next request overwrites it, so the server stops answering: a
   * restart then replays the pending call from the last stored state.
   */
  async #persistOrStop(persist: () => Promise<void>, call: number): Promise<void> {
    try {
      await persist();
    } catch (e) {
      this.log.write('error', 'alignment state not stored, stopped answering (restart to replay it)', {
        call,
        error: (e as Error).message,
      });
      this.started = false;
      // No server listening: the aggregator retries until a restarted server-alignment answers.
      for (const t of this.transports) await t.close();
    }
  }

  async stop(): Promise<void> {
    this.started = false;
    // The accepted calls first (their replies go out on the transport's connection), then the transport; a call
    // that arrived meanwhile is still finished (its state stored), though its reply may be lost with the connection.
    await this.#queue;
    for (const t of this.transports) await t.close();
    await this.#queue;
    // The connection is the module's: NatsConnectionLifecycle drains it when the app closes.
    await this.jobContext.close();
  }
}

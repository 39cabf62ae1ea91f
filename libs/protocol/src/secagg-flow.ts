/**
 * Secure aggregation over NATS: the aggregator's and one client's side of the four-step exchange (libs/privacy
 * SecAggServer / SecAggClient) on the subjects of subjects.ts, with the envelopes of messages.ts. The services call
 * these; everything here is transport-level (subscribe before publish, deadlines, subject/sender checks), the
 * cryptography is libs/privacy's.
 *
 * Ordering without JetStream: a client subscribes to the keys broadcast, its shares subject and the unmasking
 * request before it advertises its keys, and the aggregator subscribes to the four client steps before anything
 * else, so no message of the exchange can be published before its reader listens. A client that misses a step
 * (crash, slow network) simply counts as dropped; Shamir recovery covers up to holders - t of them.
 *
 * Sizes: keys, shares and unmasking messages scale with the number of clients, the masked input with the model
 * ((L + 1 + S) * 8 bytes). Given a blob store (the services always pass one), a client puts its masked input in its
 * own update bucket and sends a MaskedInputRef on the masked subject; the aggregator downloads it from that bucket
 * only, refusing any other size than the plan's before a chunk is fetched. Without one the masked input travels
 * inline and must fit the server's max_payload.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  SecAggClient,
  SecAggServer,
  fromB64,
  maskedLength,
  toB64,
  type MaskedInput,
  type SecAggConfig,
  type SecAggInput,
  type SecAggResult,
} from '../../privacy/src/index.js';
import type { BlobStore } from './blob-store.js';
import { ProtocolError } from './errors.js';
import {
  PROTOCOL_VERSION,
  SecAggAdvertiseSchema,
  SecAggKeysSchema,
  SecAggMaskedSchema,
  SecAggShareKeysSchema,
  SecAggSharesSchema,
  SecAggUnmaskRequestSchema,
  SecAggUnmaskSchema,
  decodeMessage,
  type MaskedInputRef,
  type SecAggPlan,
} from './messages.js';
import { publishMessage } from './publish.js';
import {
  SECAGG_CLIENT_STEPS,
  parseSecAggClientSubject,
  secAggClientSubject,
  secAggKeysSubject,
  secAggSharesSubject,
  secAggStepPattern,
  secAggUnmaskRequestSubject,
  type SecAggClientStep,
} from './subjects.js';

/** libs/privacy's SecAggConfig from a plan message. */
export function secAggConfigOf(plan: SecAggPlan): SecAggConfig {
  return {
    roundId: plan.roundId,
    clients: plan.clients,
    threshold: plan.threshold,
    vectorLength: plan.vectorLength,
    clipRange: plan.clipRange,
    maxWeight: plan.maxWeight,
    graph: plan.graph,
    ...(plan.statsLength !== undefined ? { statsLength: plan.statsLength } : {}),
  };
}

const STEP_SCHEMA = {
  advertise: SecAggAdvertiseSchema,
  'share-keys': SecAggShareKeysSchema,
  masked: SecAggMaskedSchema,
  unmask: SecAggUnmaskSchema,
} as const;

export interface SecAggAggregatorOptions {
  readonly nc: NatsConnection;
  readonly plan: SecAggPlan;
  /** Per step: stop waiting when every expected client answered or after this many ms. */
  readonly stepTimeoutMs: number;
  /**
   * The unmasking step's wait instead of stepTimeoutMs (a live client answers it at once; a shorter wait lets a
   * client that died after masking be recovered without waiting out a training-length step).
   */
  readonly unmaskTimeoutMs?: number;
  /** Called once the aggregator listens for the four client steps (before that, a client's message could be lost). */
  readonly onListening?: () => void;
  /** A message dropped at the boundary (bad subject, schema, job/round/client mismatch). */
  readonly onRejected?: (subject: string, reason: string) => void;
  /**
   * Where masked inputs sent as blob refs are read: `bucketOf(client)` is the only bucket accepted for that
   * client's ref (its own update bucket). Absent: a ref is rejected.
   */
  readonly blobs?: { readonly store: BlobStore; readonly bucketOf: (clientId: string) => string };
  /** Aborted (the aggregator stops): stop waiting, send nothing more, reject with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface SecAggAggregatorResult extends SecAggResult {
  /** Transport- and protocol-level rejections, `subject: reason`. */
  readonly rejected: readonly string[];
  /** Clients whose masked input is in the sum but who did not answer the unmasking request (recovered by Shamir). */
  readonly unmaskMissing: readonly string[];
}

/**
 * The aggregator's side of one round. Resolves with the survivors' sum; throws SecAggError (from libs/privacy)
 * when fewer than the threshold remain at a step or a secret cannot be recovered.
 */
export async function runSecAggAggregator(opts: SecAggAggregatorOptions): Promise<SecAggAggregatorResult> {
  const { nc, plan } = opts;
  const { jobId, round } = plan;
  const server = new SecAggServer(secAggConfigOf(plan));
  const rejected: string[] = [];
  const reject = (subject: string, reason: string): null => {
    rejected.push(`${subject}: ${reason}`);
    opts.onRejected?.(subject, reason);
    return null;
  };
  const maskedBytes = maskedLength(secAggConfigOf(plan)) * 8;
  const inbox = new Map<
    SecAggClientStep,
    { bodies: unknown[]; from: Set<string>; downloads: Set<Promise<void>>; wake?: () => void }
  >(SECAGG_CLIENT_STEPS.map((s) => [s, { bodies: [], from: new Set<string>(), downloads: new Set() }]));
  /** A masked input sent as a blob ref: read from the sender's own bucket, at exactly the plan's size. */
  const download = async (subject: string, clientId: string, ref: MaskedInputRef): Promise<MaskedInput | null> => {
    const blobs = opts.blobs;
    if (blobs === undefined) return reject(subject, 'masked input by blob ref, but the aggregator has no blob store');
    const bucket = blobs.bucketOf(clientId);
    if (ref.maskedRef.bucket !== bucket)
      return reject(subject, `masked input blob in bucket ${ref.maskedRef.bucket}, not the sender's ${bucket}`);
    if (ref.maskedRef.bytes !== maskedBytes)
      return reject(subject, `masked input blob of ${ref.maskedRef.bytes} bytes, expected ${maskedBytes}`);
    try {
      const bytes = await blobs.store.get(ref.maskedRef, { maxBytes: maskedBytes });
      return { type: 'secagg.masked', roundId: ref.roundId, sender: ref.sender, masked: toB64(bytes) };
    } catch (e) {
      return reject(subject, `masked input blob ${ref.maskedRef.name}: ${(e as Error).message}`);
    }
  };
  const subs: Subscription[] = SECAGG_CLIENT_STEPS.map((step) =>
    nc.subscribe(secAggStepPattern(jobId, round, step), {
      callback: (err, msg) => {
        if (err) return;
        const where = parseSecAggClientSubject(msg.subject);
        if (where === null || where.step !== step) return void reject(msg.subject, 'not a secagg client subject');
        const d = decodeMessage(STEP_SCHEMA[step], msg.data, msg.subject, { jobId, round, clientId: where.clientId });
        if (!d.ok) return void reject(msg.subject, d.error.message);
        const box = inbox.get(step)!;
        const body = d.value.body as { type: string; roundId: string };
        // Another attempt's message (a re-run of the round after an aggregator restart shares its subjects) is not
        // this exchange's: it must neither count as an answer nor void this attempt's message as a duplicate.
        if (body.roundId !== plan.roundId)
          return void reject(msg.subject, `round id ${body.roundId} is not this exchange's ${plan.roundId}`);
        if (body.type !== 'secagg.masked-ref') {
          box.bodies.push(body);
          box.from.add(where.clientId);
          return box.wake?.();
        }
        const fetched = download(msg.subject, where.clientId, body as MaskedInputRef).then((m) => {
          box.downloads.delete(fetched);
          if (m === null) return;
          box.bodies.push(m);
          box.from.add(where.clientId);
          box.wake?.();
        });
        box.downloads.add(fetched);
      },
    }),
  );
  const collect = async (
    step: SecAggClientStep,
    expected: readonly string[],
    timeoutMs = opts.stepTimeoutMs,
  ): Promise<unknown[]> => {
    const box = inbox.get(step)!;
    const done = (): boolean => expected.every((c) => box.from.has(c));
    if (!done() && !opts.signal?.aborted) {
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', stop);
          resolve();
        };
        const timer = setTimeout(stop, timeoutMs);
        opts.signal?.addEventListener('abort', stop, { once: true });
        box.wake = () => {
          if (done()) stop();
        };
      });
      box.wake = undefined;
    }
    opts.signal?.throwIfAborted();
    // Masked inputs whose download began before the deadline are still in time.
    await Promise.all(box.downloads);
    return [...box.bodies];
  };
  try {
    await nc.flush(); // the subscriptions are registered on the server before any client is told to start
    opts.onListening?.();
    const env = { protocolVersion: PROTOCOL_VERSION, jobId, round } as const;
    const keys = server.advertise(await collect('advertise', plan.clients));
    publishMessage(nc, secAggKeysSubject(jobId, round), SecAggKeysSchema, { ...env, body: keys });
    const forwards = server.shareKeys(
      await collect(
        'share-keys',
        keys.keys.map((k) => k.id),
      ),
    );
    for (const [to, fw] of forwards)
      publishMessage(nc, secAggSharesSubject(jobId, round, to), SecAggSharesSchema, { ...env, clientId: to, body: fw });
    const request = server.maskedInputs(await collect('masked', [...forwards.keys()]));
    publishMessage(nc, secAggUnmaskRequestSubject(jobId, round), SecAggUnmaskRequestSchema, { ...env, body: request });
    const result = server.unmask(
      await collect('unmask', request.survivors, opts.unmaskTimeoutMs ?? opts.stepTimeoutMs),
    );
    for (const r of server.rejected) rejected.push(`${r.round}${r.clientId ? ` ${r.clientId}` : ''}: ${r.reason}`);
    const answered = inbox.get('unmask')!.from;
    return { ...result, rejected, unmaskMissing: request.survivors.filter((c) => !answered.has(c)) };
  } finally {
    for (const s of subs) s.unsubscribe();
  }
}

export interface SecAggClientOptions {
  readonly nc: NatsConnection;
  readonly plan: SecAggPlan;
  readonly clientId: string;
  /** This client's input (prepareClientInput from libs/privacy); may still be training when the exchange starts. */
  readonly input: SecAggInput | Promise<SecAggInput>;
  /** How long to wait for each aggregator message. */
  readonly stepTimeoutMs: number;
  /** Stop after this step (tests simulate a client that dies mid-protocol). */
  readonly stopAfter?: SecAggClientStep;
  /** Replaces node:crypto randomBytes in the client (tests only). */
  readonly random?: (n: number) => Buffer;
  /** Aborted: send nothing more (a stopping trainer must not answer for a round it left, e.g. reveal its shares). */
  readonly signal?: AbortSignal;
  /** Put the masked input in `bucket` (the client's own update bucket) and send its ref; absent: inline. */
  readonly blobs?: { readonly store: BlobStore; readonly bucket: string };
}

/** One client's side of one round: advertise, share keys, send the masked input, reveal shares. */
export async function runSecAggClient(opts: SecAggClientOptions): Promise<{ completed: SecAggClientStep }> {
  const { nc, plan, clientId } = opts;
  const { jobId, round } = plan;
  const client = new SecAggClient(clientId, secAggConfigOf(plan), opts.random ? { random: opts.random } : {});
  const next = (
    subject: string,
    schema: typeof SecAggKeysSchema | typeof SecAggSharesSchema | typeof SecAggUnmaskRequestSchema,
    expectClient: boolean,
  ) => {
    const sub = nc.subscribe(subject);
    const value = (async (): Promise<unknown> => {
      const timer = setTimeout(() => sub.unsubscribe(), opts.stepTimeoutMs);
      try {
        for await (const m of sub) {
          const d = decodeMessage(schema, m.data, m.subject, {
            jobId,
            round,
            ...(expectClient ? { clientId } : {}),
          });
          if (!d.ok) throw d.error;
          // Another attempt of this round (an aggregator restarted and re-ran it) uses the same subjects: skipped.
          const body = (d.value as { body: { roundId?: unknown } }).body;
          if (body.roundId !== plan.roundId) continue;
          // The body is validated again, field by field, by SecAggClient (libs/privacy messages).
          return body;
        }
        throw new ProtocolError(subject, [{ path: '', reason: `no message within ${opts.stepTimeoutMs} ms` }]);
      } finally {
        clearTimeout(timer);
        sub.unsubscribe();
      }
    })();
    value.catch(() => {}); // awaited below; an early failure must not become an unhandled rejection meanwhile
    return value;
  };
  const keys = next(secAggKeysSubject(jobId, round), SecAggKeysSchema, false);
  const shares = next(secAggSharesSubject(jobId, round, clientId), SecAggSharesSchema, true);
  const request = next(secAggUnmaskRequestSubject(jobId, round), SecAggUnmaskRequestSchema, false);
  await nc.flush();
  const env = { protocolVersion: PROTOCOL_VERSION, jobId, round, clientId } as const;
  const send = (step: SecAggClientStep, body: unknown): void => {
    opts.signal?.throwIfAborted();
    publishMessage(nc, secAggClientSubject(jobId, round, step, clientId), STEP_SCHEMA[step], {
      ...env,
      body,
    } as never);
  };
  send('advertise', client.advertise());
  if (opts.stopAfter === 'advertise') return { completed: 'advertise' };
  send('share-keys', client.shareKeys(await keys));
  if (opts.stopAfter === 'share-keys') return { completed: 'share-keys' };
  const forward = await shares;
  const masked = client.maskedInput(forward, await opts.input);
  if (opts.blobs) {
    opts.signal?.throwIfAborted();
    const maskedRef = await opts.blobs.store.put(fromB64(masked.masked), { bucket: opts.blobs.bucket });
    const ref: MaskedInputRef = { type: 'secagg.masked-ref', roundId: masked.roundId, sender: clientId, maskedRef };
    send('masked', ref);
  } else send('masked', masked);
  if (opts.stopAfter === 'masked') return { completed: 'masked' };
  const unmaskRequest = await request;
  send('unmask', client.unmask(unmaskRequest));
  await nc.flush();
  return { completed: 'unmask' };
}

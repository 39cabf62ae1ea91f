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
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  SecAggClient,
  SecAggServer,
  type SecAggConfig,
  type SecAggInput,
  type SecAggResult,
} from '../../privacy/src/index.js';
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
  const reject = (subject: string, reason: string): void => {
    rejected.push(`${subject}: ${reason}`);
    opts.onRejected?.(subject, reason);
  };
  const inbox = new Map<SecAggClientStep, { bodies: unknown[]; from: Set<string>; wake?: () => void }>(
    SECAGG_CLIENT_STEPS.map((s) => [s, { bodies: [], from: new Set<string>() }]),
  );
  const subs: Subscription[] = SECAGG_CLIENT_STEPS.map((step) =>
    nc.subscribe(secAggStepPattern(jobId, round, step), {
      callback: (err, msg) => {
        if (err) return;
        const where = parseSecAggClientSubject(msg.subject);
        if (where === null || where.step !== step) return reject(msg.subject, 'not a secagg client subject');
        const d = decodeMessage(STEP_SCHEMA[step], msg.data, msg.subject, { jobId, round, clientId: where.clientId });
        if (!d.ok) return reject(msg.subject, d.error.message);
        const box = inbox.get(step)!;
        box.bodies.push(d.value.body);
        box.from.add(where.clientId);
        box.wake?.();
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
    if (!done()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        box.wake = () => {
          if (done()) {
            clearTimeout(timer);
            resolve();
          }
        };
      });
      box.wake = undefined;
    }
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
    const sub = nc.subscribe(subject, { max: 1 });
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
          // The body is validated again, field by field, by SecAggClient (libs/privacy messages).
          return (d.value as { body: unknown }).body;
        }
        throw new ProtocolError(subject, [{ path: '', reason: `no message within ${opts.stepTimeoutMs} ms` }]);
      } finally {
        clearTimeout(timer);
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
  send('masked', client.maskedInput(forward, await opts.input));
  if (opts.stopAfter === 'masked') return { completed: 'masked' };
  const unmaskRequest = await request;
  send('unmask', client.unmask(unmaskRequest));
  await nc.flush();
  return { completed: 'unmask' };
}

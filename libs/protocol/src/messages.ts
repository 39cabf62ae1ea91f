/**
 * Wire messages of a federated round, validated at the boundary with zod. Messages carry references to
 * blobs (BlobRef), never weights: NATS caps a message at 1 MB by default, and a LoRA update for a 7B adapter
 * is already several MB.
 *
 * Versioning: every message has `protocolVersion: 1`. Objects are strict (unknown keys are rejected), so a
 * field added or renamed means a new protocol version; a peer on another version gets a ProtocolError that
 * says so instead of silently dropping the field.
 */
import { z } from 'zod';
import { ProtocolError, type ProtocolIssue } from './errors.js';
import { ID_PATTERN } from './subjects.js';
/** The bodies of the secagg messages: libs/privacy's round messages (its messages.ts), carried as they are. */
import * as secagg from '../../privacy/src/index.js';

/** The protocol version this build speaks and accepts. */
export const PROTOCOL_VERSION = 1 as const;

const protocolVersion = z.literal(PROTOCOL_VERSION, {
  error: (iss) => `unsupported protocolVersion ${JSON.stringify(iss.input)} (this build speaks ${PROTOCOL_VERSION})`,
});
const id = z.string().regex(ID_PATTERN, 'not a safe id (1-64 chars of A-Z a-z 0-9 _ -, starting alphanumeric)');
const round = z.int().nonnegative();
const count = z.int().nonnegative();
/** Milliseconds since the Unix epoch. */
const epochMs = z.int().nonnegative();

function uniqueIds(ids: readonly string[], ctx: z.RefinementCtx): void {
  const seen = new Set<string>();
  ids.forEach((v, i) => {
    if (seen.has(v)) ctx.addIssue({ code: 'custom', path: [i], message: `duplicate id ${JSON.stringify(v)}` });
    seen.add(v);
  });
}
const idList = z.array(id).min(1).superRefine(uniqueIds);

/** Element types of the safetensors format (its spelling). */
export const DTYPES = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'] as const;
export type Dtype = (typeof DTYPES)[number];

/**
 * A reference to an object-store blob. `name` is the sha256 hex unless the uploader chose a name;
 * `dtype`/`shape` describe single-tensor blobs and are absent for multi-tensor (safetensors) blobs.
 */
export const BlobRefSchema = z.strictObject({
  bucket: z.string().regex(/^[-\w]{1,128}$/, 'not an object-store bucket name ([-A-Za-z0-9_], 1-128 chars)'),
  name: z
    .string()
    .min(1)
    .max(255)
    .regex(/^[^\s*>]+$/, 'blob names may not contain whitespace, * or >'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex characters'),
  /** Size in bytes. */
  bytes: count,
  dtype: z.enum(DTYPES).optional(),
  shape: z.array(count).optional(),
});
export type BlobRef = z.infer<typeof BlobRefSchema>;

/**
 * KV `package` (PACKAGE_KEY): the job's emulator package, one object per file in the package bucket. `manifest` is
 * the package's emulator_manifest.json (per-file sha256s, layer map, split); trainers fetch every file, check it
 * against the manifest, and load the folder.
 */
export const PackageRefSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  manifest: BlobRefSchema,
  files: z
    .array(
      z.strictObject({
        /** A plain file name inside the package folder. */
        path: z.string().regex(/^[\w][\w.-]{0,200}$/, 'a plain file name'),
        ref: BlobRefSchema,
      }),
    )
    .min(1),
});
export type PackageRef = z.infer<typeof PackageRefSchema>;

/** Client-side training settings of one round. */
export const TrainingConfigSchema = z.strictObject({
  /** K: AdamW steps per client per round. */
  localSteps: z.int().min(1),
  learningRate: z.number().positive(),
  /** Sequences per step. */
  batchSize: z.int().min(1),
  /** eps of the proximal term eps * ||theta_A - theta_A^t||^2 (0 = plain local SGD objective). */
  proximalWeight: z.number().nonnegative(),
  seed: z.int(),
});
export type TrainingConfig = z.infer<typeof TrainingConfigSchema>;

/** Aggregator -> all, on `fl.<job>.round.<r>.plan`: who trains this round, on which weights, until when. */
export const RoundPlanSchema = z
  .strictObject({
    protocolVersion,
    jobId: id,
    round,
    clients: idList,
    /** Distinct client updates needed to close the round at the deadline. */
    quorum: z.int().min(1),
    /** When the aggregator stops waiting (epoch ms). */
    deadlineAt: epochMs,
    /** The emulator package's manifest (emulator + adapter layers; never the full model): the same every round. */
    model: BlobRefSchema,
    adapterLora: BlobRefSchema,
    emulatorLora: BlobRefSchema,
    training: TrainingConfigSchema,
  })
  .superRefine((p, ctx) => {
    if (p.quorum > p.clients.length) {
      ctx.addIssue({
        code: 'custom',
        path: ['quorum'],
        message: `quorum ${p.quorum} exceeds the ${p.clients.length} planned clients`,
      });
    }
  });
export type RoundPlan = z.infer<typeof RoundPlanSchema>;

/**
 * What a task asks: `train` (absent means train) one round of local training, or `evaluate` the broadcast adapter
 * on the emulator (AdapEmu) on the client's own test set and publish a ClientMetrics (private evaluation).
 */
export const TASK_KINDS = ['train', 'evaluate'] as const;
export type TaskKind = (typeof TASK_KINDS)[number];

/** Aggregator -> trainer replicas, through the work queue: train (or evaluate) `clientId` for one round. */
export const TrainTaskSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  clientId: id,
  /**
   * Absent: train. Optional so that training tasks are byte-identical to earlier builds of protocol 1; a build that
   * predates it rejects (terminates) evaluate tasks as malformed, which the aggregator then sees as missing metrics.
   */
  kind: z.enum(TASK_KINDS).optional(),
  /** The emulator package's manifest; the trainer checks it holds that package. */
  model: BlobRefSchema,
  adapterLora: BlobRefSchema,
  emulatorLora: BlobRefSchema,
  training: TrainingConfigSchema,
  /** After this (epoch ms) the aggregator no longer waits for the result; a trainer may skip the task. */
  deadlineAt: epochMs,
  /**
   * Secure aggregation (privacy.secureAggregation): the round's SecAgg plan. The trainer then sends its update only
   * masked, through runSecAggClient (secagg-flow.ts), and its ClientUpdate carries counts only (no adapterLora).
   */
  secagg: z.lazy(() => SecAggPlanSchema).optional(),
});
export type TrainTask = z.infer<typeof TrainTaskSchema>;

/** One client -> aggregator, on `fl.<job>.round.<r>.update.<clientId>`. */
export const ClientUpdateSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  clientId: id,
  /**
   * safetensors blob with the adapter's LoRA A and B tensors after local training (PEFT names). Absent under secure
   * aggregation: the update then travels masked on the round's secagg subjects and this message carries the counts
   * only (an aggregator not running secure aggregation rejects such an update).
   */
  adapterLora: BlobRefSchema.optional(),
  /** Training examples seen (FedAvg weight). */
  examples: count,
  /** Loss-bearing tokens seen. */
  tokens: count,
  /** Mean training loss over the local steps (nats per token). */
  meanLoss: z.number(),
  steps: count,
  /** Wall time of the local training, in ms. */
  durationMs: count,
});
export type ClientUpdate = z.infer<typeof ClientUpdateSchema>;

/**
 * One client's trainer -> aggregator, on `fl.<job>.round.<r>.metrics.<clientId>`: AdapEmu (the round's adapter on
 * the emulator package) on the client's own test set. Numbers only: the test data never leaves the client.
 */
export const ClientMetricsSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  /** Rounds completed when the evaluated adapter was made (the round of the EvalRequest). */
  round,
  clientId: id,
  mode: z.literal('adapEmu'),
  /** Mean cross-entropy per loss-bearing token (nats). */
  loss: z.number(),
  /** Exact-match accuracy over `items`, in [0, 1]. */
  accuracy: z.number().min(0).max(1),
  /** Loss-bearing tokens and scored items (the weights of the pooled 'all' row). */
  tokens: count,
  items: count,
  durationMs: count,
});
export type ClientMetrics = z.infer<typeof ClientMetricsSchema>;

/**
 * Aggregator -> server-alignment, a request on `fl.<job>.align`: `steps` alignment steps of the emulator against
 * `adapterLora`. `call` numbers the alignments of a job (0: pre-alignment, r + 1: after round r), so a repeated
 * request (the aggregator restarted after the server aligned) is answered from the stored result instead of
 * aligning twice.
 */
export const AlignRequestSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  call: count,
  adapterLora: BlobRefSchema,
  steps: count,
});
export type AlignRequest = z.infer<typeof AlignRequestSchema>;

/** A service's refusal of a request (the reply instead of the result): what went wrong, for the caller's error. */
export const RequestErrorSchema = z.strictObject({ protocolVersion, jobId: id, error: z.string().min(1) });
export type RequestError = z.infer<typeof RequestErrorSchema>;

/** Server-alignment's answer to an AlignRequest: the re-aligned emulator LoRA and the alignment's statistics. */
export const AlignOkSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  call: count,
  emulatorLora: BlobRefSchema,
  loss: z.number(),
  l2: z.number(),
  kl: z.number(),
  steps: count,
});
export type AlignOk = z.infer<typeof AlignOkSchema>;
export const AlignReplySchema = z.union([AlignOkSchema, RequestErrorSchema]);
export type AlignReply = z.infer<typeof AlignReplySchema>;

/** Server-alignment -> all, on `fl.<job>.round.<r>.aligned`: the emulator was re-aligned. */
export const AlignmentDoneSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  emulatorLora: BlobRefSchema,
  steps: count,
  /** Mean alignment loss over the steps. */
  meanLoss: z.number(),
});
export type AlignmentDone = z.infer<typeof AlignmentDoneSchema>;

/** Evaluation settings of docs/fedbiot-algorithm.md §6: base model, adapter on emulator, adapter on full model. */
export const EVAL_MODES = ['base', 'adapEmu', 'adapFu'] as const;
export type EvalMode = (typeof EVAL_MODES)[number];

/** Aggregator -> evaluator, on `fl.<job>.round.<r>.evaluate`. */
export const EvalRequestSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  adapterLora: BlobRefSchema,
  emulatorLora: BlobRefSchema,
  modes: z
    .array(z.enum(EVAL_MODES))
    .min(1)
    .superRefine((m, ctx) => uniqueIds(m, ctx)),
});
export type EvalRequest = z.infer<typeof EvalRequestSchema>;

export const EvalScoreSchema = z.strictObject({
  mode: z.enum(EVAL_MODES),
  /** Mean cross-entropy per loss-bearing token (nats). */
  loss: z.number(),
  examples: count,
  tokens: count,
  /** Task metrics (accuracy, exact match...), name -> value. */
  metrics: z.record(z.string().min(1), z.number()),
});
export type EvalScore = z.infer<typeof EvalScoreSchema>;

/** Evaluator -> all, on `fl.<job>.round.<r>.evaluated`. */
export const EvalResultSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  scores: z.array(EvalScoreSchema).min(1),
  durationMs: count,
});
export type EvalResult = z.infer<typeof EvalResultSchema>;

export const JOB_STATUSES = ['created', 'running', 'paused', 'completed', 'failed', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

/** KV `job`: where a job stands; a restarted aggregator continues at `lastCompletedRound + 1`. */
export const JobStateSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  status: z.enum(JOB_STATUSES),
  totalRounds: z.int().min(1),
  /** -1 before the first round completes. */
  lastCompletedRound: z.int().min(-1),
  /** The emulator package's manifest. */
  model: BlobRefSchema.nullable(),
  /** Global adapter LoRA after `lastCompletedRound` (null before round 0 is aggregated). */
  adapterLora: BlobRefSchema.nullable(),
  emulatorLora: BlobRefSchema.nullable(),
  /** Reason of a `failed`/`cancelled` status, for the operator. */
  message: z.string().max(2000).nullable(),
  updatedAt: epochMs,
});
export type JobState = z.infer<typeof JobStateSchema>;

export const ROUND_PHASES = ['planned', 'collecting', 'aggregated', 'aligned', 'evaluated', 'failed'] as const;
export type RoundPhase = (typeof ROUND_PHASES)[number];

/** KV `round.<r>`: progress inside one round. */
export const RoundStateSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  phase: z.enum(ROUND_PHASES),
  clients: idList,
  /** Clients whose update was accepted, in arrival order. */
  received: z.array(id).superRefine(uniqueIds),
  /** Aggregated adapter LoRA, once `phase` >= aggregated. */
  adapterLora: BlobRefSchema.nullable(),
  startedAt: epochMs,
  updatedAt: epochMs,
});
export type RoundState = z.infer<typeof RoundStateSchema>;

/** Operator -> all, on `fl.<job>.control.<verb>`. */
export const ControlCommandSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  verb: z.enum(['pause', 'resume', 'cancel']),
  reason: z.string().max(2000),
  issuedAt: epochMs,
});
export type ControlCommand = z.infer<typeof ControlCommandSchema>;

/** Outcome of decodeMessage: never a thrown exception. */
export type DecodeResult<T> =
  { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: ProtocolError };

/** Fields a decoded message must agree with (normally taken from its subject). */
export interface Expected {
  readonly jobId?: string;
  readonly round?: number;
  readonly clientId?: string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** `['clients', 2, 'x']` -> `clients[2].x`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out;
}

function zodIssues(error: z.ZodError): ProtocolIssue[] {
  return error.issues.map((i) => ({ path: formatPath(i.path), reason: i.message }));
}

/**
 * A NestJS `ClientProxy.emit/send` on the NATS transport wraps the payload as `{pattern, data, id?}`
 * (docs/engine-notes.md §8). Accepting that envelope lets Nest producers talk to plain nats.js consumers.
 */
function unwrapNestEnvelope(json: unknown, subject: string): unknown {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return json;
  const o = json as Record<string, unknown>;
  const keys = Object.keys(o);
  const envelopeKeys = keys.every((k) => k === 'pattern' || k === 'data' || k === 'id');
  return envelopeKeys && 'data' in o && o['pattern'] === subject ? o['data'] : json;
}

/**
 * Parses and validates one message. Returns `{ok: false, error}` with a ProtocolError naming `subject`, the
 * field path and the reason for bytes that are not UTF-8 JSON, do not match `schema`, or disagree with
 * `expected` (e.g. a `clientId` field that is not the client of the subject it came on). Never throws.
 */
export function decodeMessage<S extends z.ZodType>(
  schema: S,
  bytes: Uint8Array,
  subject: string,
  expected: Expected = {},
): DecodeResult<z.output<S>> {
  const fail = (issues: ProtocolIssue[], cause?: unknown): DecodeResult<z.output<S>> => ({
    ok: false,
    error: new ProtocolError(subject, issues, cause === undefined ? undefined : { cause }),
  });
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    return fail([{ path: '', reason: `not UTF-8 JSON (${(e as Error).message})` }], e);
  }
  let parsed: ReturnType<S['safeParse']>;
  try {
    parsed = schema.safeParse(unwrapNestEnvelope(json, subject)) as ReturnType<S['safeParse']>;
  } catch (e) {
    // A refinement that throws is a bug here, but a consumer must still survive the message.
    return fail([{ path: '', reason: `validation crashed: ${(e as Error).message}` }], e);
  }
  if (!parsed.success) return fail(zodIssues(parsed.error));
  const value = parsed.data as Record<string, unknown>;
  const mismatches: ProtocolIssue[] = [];
  for (const key of ['jobId', 'round', 'clientId'] as const) {
    const want = expected[key];
    if (want !== undefined && value[key] !== want) {
      mismatches.push({
        path: key,
        reason: `is ${JSON.stringify(value[key])} but the subject says ${JSON.stringify(want)}`,
      });
    }
  }
  if (mismatches.length > 0) return fail(mismatches);
  return { ok: true, value: parsed.data as z.output<S> };
}

/**
 * Validates `value` and serialises it as UTF-8 JSON. Throws ProtocolError naming `subject`: an invalid
 * outgoing message is a bug of the sender and must not reach the wire.
 */
export function encodeMessage<S extends z.ZodType>(schema: S, value: z.input<S>, subject: string): Uint8Array {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new ProtocolError(subject, zodIssues(parsed.error));
  return new TextEncoder().encode(JSON.stringify(parsed.data));
}

// --- Secure aggregation (libs/privacy, issue 14) ---
// Each libs/privacy message travels as `body` of an envelope naming the job, round and (for client messages) the
// client of its subject, so decodeMessage's subject check applies; the body's own `sender` must be that client too:
// a client's NATS identity can publish only on its own subjects, and no subject can carry another client's message.

const SecAggGraphSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('complete') }),
  z.strictObject({ kind: z.literal('harary'), k: z.int().min(2), seed: z.string().min(1).max(256) }),
]);

/**
 * The public parameters of one round's secure aggregation (libs/privacy SecAggConfig) plus the client-side DP
 * settings; the aggregator fixes it and every sampled client must hold the same (in its TrainTask or the job's KV).
 */
export const SecAggPlanSchema = z.strictObject({
  protocolVersion,
  jobId: id,
  round,
  /** Binds keys, ciphertexts and masks to this aggregation; fresh every time (a random suffix). */
  roundId: z.string().min(1).max(256),
  clients: idList,
  threshold: z.int().min(1),
  vectorLength: z.int().min(1),
  clipRange: z.number().positive(),
  maxWeight: z.int().min(1),
  graph: SecAggGraphSchema,
  /** Unweighted integer stats each client appends (libs/privacy CLIENT_STATS_LENGTH: clipped flag, norm); default 0. */
  statsLength: z.int().min(0).max(16).optional(),
  /** Client-level DP: clip each update delta to L2 norm `clip`, add N(0, noiseStd^2) per element before masking. */
  dp: z.strictObject({ clip: z.number().positive(), noiseStd: z.number().nonnegative() }).optional(),
});
export type SecAggPlan = z.infer<typeof SecAggPlanSchema>;

const fromClient = { protocolVersion, jobId: id, round, clientId: id };
const fromAggregator = { protocolVersion, jobId: id, round };
const senderIsClient: [
  (m: { clientId: string; body: { sender: string } }) => boolean,
  { path: PropertyKey[]; message: string },
] = [
  (m) => m.body.sender === m.clientId,
  {
    path: ['body', 'sender'],
    message: 'is not the client of the message (a client sends only its own secagg messages)',
  },
];

/** Client -> aggregator on `secagg.advertise.<client>`: its two X25519 public keys. */
export const SecAggAdvertiseSchema = z
  .strictObject({ ...fromClient, body: secagg.AdvertiseKeysSchema })
  .refine(...senderIsClient);
/** Client -> aggregator on `secagg.share-keys.<client>`: its encrypted Shamir shares, one per neighbour. */
export const SecAggShareKeysSchema = z
  .strictObject({ ...fromClient, body: secagg.ShareKeysSchema })
  .refine(...senderIsClient);
/**
 * The masked input as a blob (secagg-flow.ts): the (vectorLength + 1 + statsLength) * 8 masked bytes in the
 * sender's own update bucket, since a masked vector scales with the model and outgrows NATS's max_payload (a
 * 7B-shaped adapter's is tens of MB). The aggregator reads it only from that bucket.
 */
export const MaskedInputRefSchema = z.strictObject({
  type: z.literal('secagg.masked-ref'),
  roundId: z.string().min(1).max(256),
  sender: id,
  maskedRef: BlobRefSchema,
});
export type MaskedInputRef = z.infer<typeof MaskedInputRefSchema>;
/** Client -> aggregator on `secagg.masked.<client>`: its masked, encoded, weighted input, inline or as a blob ref. */
export const SecAggMaskedSchema = z
  .strictObject({ ...fromClient, body: z.union([secagg.MaskedInputSchema, MaskedInputRefSchema]) })
  .refine(...senderIsClient);
/** Client -> aggregator on `secagg.unmask.<client>`: the shares it reveals for unmasking. */
export const SecAggUnmaskSchema = z
  .strictObject({ ...fromClient, body: secagg.UnmaskSchema })
  .refine(...senderIsClient);
/** Aggregator -> all on `secagg.keys`. */
export const SecAggKeysSchema = z.strictObject({ ...fromAggregator, body: secagg.KeysBroadcastSchema });
/** Aggregator -> one client on `secagg.shares.<client>` (`clientId` = body.to). */
export const SecAggSharesSchema = z
  .strictObject({ ...fromClient, body: secagg.SharesForwardSchema })
  .refine((m) => m.body.to === m.clientId, { path: ['body', 'to'], message: 'is not the client of the message' });
/** Aggregator -> all on `secagg.unmask-request`. */
export const SecAggUnmaskRequestSchema = z.strictObject({ ...fromAggregator, body: secagg.UnmaskRequestSchema });

/**
 * Subjects and JetStream resource names of one federated job. Everything lives under `fl.<jobId>.`, so a
 * job can be given its own NATS account/permissions, and every builder validates its tokens: a job or
 * client id with `.`, `*`, `>` or whitespace would silently change which subscribers match.
 *
 * Subject map (core NATS unless noted):
 *   fl.<job>.round.<r>.plan                 aggregator -> all        RoundPlan
 *   fl.<job>.task.<client>                  aggregator -> trainers   TrainTask   (JetStream work queue)
 *   fl.<job>.round.<r>.update.<client>      one client -> aggregator ClientUpdate (each client publishes only its own)
 *   fl.<job>.align                          aggregator -> server-alignment  AlignRequest (reply AlignReply)
 *   fl.<job>.round.<r>.aligned              server-alignment -> all  AlignmentDone
 *   fl.<job>.round.<r>.evaluate             aggregator -> evaluator  EvalRequest
 *   fl.<job>.round.<r>.evaluated            evaluator -> all         EvalResult
 *   fl.<job>.control.<verb>                 operator -> all          ControlCommand
 */
import { InvalidIdentifierError } from './errors.js';

/** First token of every subject of this protocol. */
export const SUBJECT_ROOT = 'fl' as const;

/**
 * Job and client ids: 1-64 chars of `[A-Za-z0-9_-]`, starting alphanumeric. The same set is legal in NATS
 * subject tokens, stream names and KV/object-store bucket names, so one id works everywhere.
 */
export const ID_PATTERN: RegExp = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** Operator commands on `fl.<job>.control.<verb>`. */
export const CONTROL_VERBS = ['pause', 'resume', 'cancel'] as const;
export type ControlVerb = (typeof CONTROL_VERBS)[number];

function checkId(kind: 'job id' | 'client id', value: unknown): string {
  if (typeof value !== 'string') throw new InvalidIdentifierError(kind, value, 'must be a string');
  if (!ID_PATTERN.test(value)) {
    throw new InvalidIdentifierError(
      kind,
      value,
      'use 1-64 characters of A-Z a-z 0-9 _ -, starting with a letter or digit ' +
        '(no dots, wildcards or spaces: they would change NATS subject matching)',
    );
  }
  return value;
}

/** Throws InvalidIdentifierError unless `jobId` is a safe token; returns it unchanged. */
export function assertJobId<J extends string>(jobId: J): J {
  return checkId('job id', jobId) as J;
}

/** Throws InvalidIdentifierError unless `clientId` is a safe token; returns it unchanged. */
export function assertClientId<C extends string>(clientId: C): C {
  return checkId('client id', clientId) as C;
}

/** Throws InvalidIdentifierError unless `round` is a non-negative safe integer. */
export function assertRound<R extends number>(round: R): R {
  if (!Number.isSafeInteger(round) || round < 0) {
    throw new InvalidIdentifierError('round', round, 'must be a non-negative integer');
  }
  return round;
}

export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

const roundBase = <J extends string, R extends number>(jobId: J, round: R) =>
  `${SUBJECT_ROOT}.${assertJobId(jobId)}.round.${assertRound(round)}` as const;

/** `fl.<job>.round.<r>.plan`: the aggregator's RoundPlan. */
export function planSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.plan` as const;
}

/** `fl.<job>.round.<r>.update.<client>`: the one subject `clientId` may publish its ClientUpdate on. */
export function updateSubject<J extends string, R extends number, C extends string>(jobId: J, round: R, clientId: C) {
  return `${roundBase(jobId, round)}.update.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.round.<r>.update.*`: what the collector subscribes to. */
export function roundUpdatesPattern<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.update.*` as const;
}

/**
 * `fl.<job>.round.*.update.<client>`: the publish permission to grant one client (NATS `permissions.publish`),
 * so no client can forge another's update.
 */
export function clientUpdatePermission<J extends string, C extends string>(jobId: J, clientId: C) {
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.round.*.update.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.align`: the aggregator's AlignRequest, answered by server-alignment (queue group `server-alignment`). */
export function alignSubject<J extends string>(jobId: J) {
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.align` as const;
}

/** `fl.<job>.round.<r>.aligned`: server-alignment's AlignmentDone. */
export function alignedSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.aligned` as const;
}

/** `fl.<job>.round.<r>.evaluate`: an EvalRequest to the evaluator. */
export function evaluateSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.evaluate` as const;
}

/** `fl.<job>.round.<r>.evaluated`: the evaluator's EvalResult. */
export function evaluatedSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.evaluated` as const;
}

/**
 * `fl.<job>.round.<r>.metrics.<client>`: a client's ClientMetrics (AdapEmu on its own test set; numbers only),
 * the one metrics subject `clientId` may publish on.
 */
export function clientMetricsSubject<J extends string, R extends number, C extends string>(
  jobId: J,
  round: R,
  clientId: C,
) {
  return `${roundBase(jobId, round)}.metrics.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.round.<r>.metrics.*`: what the aggregator collects a round's client metrics on. */
export function roundMetricsPattern<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.metrics.*` as const;
}

/** `fl.<job>.control.<verb>`: an operator command. */
export function controlSubject<J extends string, V extends ControlVerb>(jobId: J, verb: V) {
  if (!(CONTROL_VERBS as readonly string[]).includes(verb)) {
    throw new InvalidIdentifierError('control verb', verb, `expected one of ${CONTROL_VERBS.join(', ')}`);
  }
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.control.${verb}` as const;
}

/** `fl.<job>.control.*`: every control command of a job. */
export function controlPattern<J extends string>(jobId: J) {
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.control.*` as const;
}

/** `fl.<job>.task.<client>`: the subject a TrainTask is stored under in the work-queue stream. */
export function taskSubject<J extends string, C extends string>(jobId: J, clientId: C) {
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.task.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.task.*`: the subjects of the job's work-queue stream. */
export function taskPattern<J extends string>(jobId: J) {
  return `${SUBJECT_ROOT}.${assertJobId(jobId)}.task.*` as const;
}

/** JetStream work-queue stream holding a job's TrainTasks (KEDA's `stream`). */
export function taskStreamName<J extends string>(jobId: J) {
  return `FL_TASKS_${assertJobId(jobId)}` as const;
}

/** Durable pull consumer shared by all pooled trainer replicas (KEDA's `consumer`). */
export const TRAINER_CONSUMER = 'client-trainer' as const;

/**
 * Durable pull consumer through which the trainers of one client (a data owner's own replicas) pull only that
 * client's tasks (filtered on `taskSubject(job, clientId)`). A work-queue stream refuses overlapping consumers, so
 * a job runs either pooled trainers or per-client trainers.
 */
export function clientConsumerName(clientId: string): string {
  return `client-${assertClientId(clientId)}`;
}

/** KV bucket with the job's JobState and RoundStates. */
export function stateBucketName<J extends string>(jobId: J) {
  return `fl-state-${assertJobId(jobId)}` as const;
}

/**
 * Object-store bucket with the job's broadcast blobs (each round's adapter and emulator LoRA), content-addressed by
 * sha256: every client may read it, so it holds nothing a client should not see.
 */
export function blobBucketName<J extends string>(jobId: J) {
  return `fl-blobs-${assertJobId(jobId)}` as const;
}

/** Object-store bucket with the job's emulator package files (the only weights a client receives); clients read it. */
export function packageBucketName<J extends string>(jobId: J) {
  return `fl-package-${assertJobId(jobId)}` as const;
}

/** Object-store bucket of the model owner's own state (alignment optimizer state); no client identity may read it. */
export function ownerBucketName<J extends string>(jobId: J) {
  return `fl-owner-${assertJobId(jobId)}` as const;
}

/** KV key (state bucket) of the job's emulator package: a PackageRef, readable by every client identity. */
export const PACKAGE_KEY = 'package' as const;

/**
 * Object-store bucket that only client `clientId` writes its update blobs to (`fl-updates-<len(job)>-<job>-<client>`).
 * Per-client buckets let subject permissions keep one client's updates unreadable to the others (see auth.ts);
 * the job id's length makes the name unambiguous, since `-` is legal inside ids: without it, client `b-c` of
 * job `a` and client `c` of job `a-b` would share a bucket.
 */
export function updateBucketName<J extends string, C extends string>(jobId: J, clientId: C) {
  return `${updateBucketPrefix(jobId)}${assertClientId(clientId)}` as const;
}

/** `fl-updates-<len(job)>-<job>-`: the common prefix of a job's update buckets (no other job's bucket has it). */
export function updateBucketPrefix<J extends string>(jobId: J) {
  return `fl-updates-${assertJobId(jobId).length}-${jobId}-` as const;
}

/** The parts of an update subject; null when `subject` is not one (or has unsafe tokens). */
export function parseUpdateSubject(subject: string): { jobId: string; round: number; clientId: string } | null {
  const t = subject.split('.');
  if (t.length !== 6 || t[0] !== SUBJECT_ROOT || t[2] !== 'round' || t[4] !== 'update') return null;
  const [, jobId, , r, , clientId] = t as [string, string, string, string, string, string];
  if (!isValidId(jobId) || !isValidId(clientId) || !/^(0|[1-9][0-9]*)$/.test(r)) return null;
  const round = Number(r);
  return Number.isSafeInteger(round) ? { jobId, round, clientId } : null;
}

// --- Secure aggregation (libs/privacy, issue 14): one four-step exchange per round, under `round.<r>.secagg`. ---
//   fl.<job>.round.<r>.secagg.<step>.<client>   one client -> aggregator  (step: advertise, share-keys, masked, unmask)
//   fl.<job>.round.<r>.secagg.keys              aggregator -> all          KeysBroadcast
//   fl.<job>.round.<r>.secagg.shares.<client>   aggregator -> that client  SharesForward (ciphertexts addressed to it)
//   fl.<job>.round.<r>.secagg.unmask-request    aggregator -> all          UnmaskRequest (the survivors)

/** The client -> aggregator steps of secure aggregation, in protocol order. */
export const SECAGG_CLIENT_STEPS = ['advertise', 'share-keys', 'masked', 'unmask'] as const;
export type SecAggClientStep = (typeof SECAGG_CLIENT_STEPS)[number];

function checkStep(step: string): void {
  if (!(SECAGG_CLIENT_STEPS as readonly string[]).includes(step))
    throw new InvalidIdentifierError('secagg step', step, `expected one of ${SECAGG_CLIENT_STEPS.join(', ')}`);
}

/** `fl.<job>.round.<r>.secagg.<step>.<client>`: the one subject `clientId` may publish that step on. */
export function secAggClientSubject<J extends string, R extends number, S extends SecAggClientStep, C extends string>(
  jobId: J,
  round: R,
  step: S,
  clientId: C,
) {
  checkStep(step);
  return `${roundBase(jobId, round)}.secagg.${step}.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.round.<r>.secagg.<step>.*`: what the aggregator subscribes to for one step. */
export function secAggStepPattern<J extends string, R extends number, S extends SecAggClientStep>(
  jobId: J,
  round: R,
  step: S,
) {
  checkStep(step);
  return `${roundBase(jobId, round)}.secagg.${step}.*` as const;
}

/** `fl.<job>.round.<r>.secagg.keys`: the aggregator's KeysBroadcast. */
export function secAggKeysSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.secagg.keys` as const;
}

/** `fl.<job>.round.<r>.secagg.shares.<client>`: the SharesForward only `clientId` may read. */
export function secAggSharesSubject<J extends string, R extends number, C extends string>(
  jobId: J,
  round: R,
  clientId: C,
) {
  return `${roundBase(jobId, round)}.secagg.shares.${assertClientId(clientId)}` as const;
}

/** `fl.<job>.round.<r>.secagg.unmask-request`: the aggregator's UnmaskRequest. */
export function secAggUnmaskRequestSubject<J extends string, R extends number>(jobId: J, round: R) {
  return `${roundBase(jobId, round)}.secagg.unmask-request` as const;
}

/** The parts of a client -> aggregator secagg subject; null when `subject` is not one. */
export function parseSecAggClientSubject(
  subject: string,
): { jobId: string; round: number; step: SecAggClientStep; clientId: string } | null {
  const t = subject.split('.');
  if (t.length !== 7 || t[0] !== SUBJECT_ROOT || t[2] !== 'round' || t[4] !== 'secagg') return null;
  const [, jobId, , r, , step, clientId] = t as [string, string, string, string, string, string, string];
  if (!isValidId(jobId) || !isValidId(clientId) || !/^(0|[1-9][0-9]*)$/.test(r)) return null;
  if (!(SECAGG_CLIENT_STEPS as readonly string[]).includes(step)) return null;
  const round = Number(r);
  return Number.isSafeInteger(round) ? { jobId, round, step: step as SecAggClientStep, clientId } : null;
}

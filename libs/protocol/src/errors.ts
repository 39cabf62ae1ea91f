/**
 * One error class per failure of the transport layer. Each carries the thing it is about (subject, blob,
 * key, round) as fields, so callers can log structurally, and a message that names it for humans.
 */

/** One schema problem: where in the message (`path`, e.g. `adapterLora.sha256`) and why. */
export interface ProtocolIssue {
  readonly path: string;
  readonly reason: string;
}

/** A message (or stored value) that does not match its schema, or is not JSON at all. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    /** The NATS subject (or `kv:<bucket>/<key>`, `task:<stream>#<seq>`) the bytes came from. */
    readonly subject: string,
    readonly issues: readonly ProtocolIssue[],
    options?: ErrorOptions,
  ) {
    super(
      `invalid message on ${subject}: ` +
        issues.map((i) => `${i.path === '' ? '(root)' : i.path}: ${i.reason}`).join('; '),
      options,
    );
  }
}

/** A tensor blob whose safetensors layout is broken (truncated, bad header, overlapping offsets...). */
export class TensorCodecError extends Error {
  override readonly name = 'TensorCodecError';
  constructor(
    /** What was being decoded (a blob name or a caller-supplied label). */
    readonly source: string,
    message: string,
    /** The tensor the problem is about, when there is one. */
    readonly tensor?: string,
  ) {
    super(`${source}${tensor === undefined ? '' : ` tensor '${tensor}'`}: ${message}`);
  }
}

/** A blob whose bytes do not match the sha256 / size its reference promises. */
export class IntegrityError extends Error {
  override readonly name = 'IntegrityError';
  constructor(
    readonly bucket: string,
    readonly blob: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`blob ${bucket}/${blob}: ${message}`, options);
  }
}

/** A referenced blob that is not in the object store (deleted, wrong bucket, never uploaded). */
export class BlobNotFoundError extends Error {
  override readonly name = 'BlobNotFoundError';
  constructor(
    readonly bucket: string,
    readonly blob: string,
  ) {
    super(`blob ${bucket}/${blob} not found in the object store`);
  }
}

/**
 * A blob larger than the reader allows: refused from its ref or its object-store meta entry, before any chunk is
 * downloaded, so a client pointing at a huge object costs the reader one small request.
 */
export class BlobTooLargeError extends Error {
  override readonly name = 'BlobTooLargeError';
  constructor(
    readonly bucket: string,
    readonly blob: string,
    readonly bytes: number,
    readonly limit: number,
    readonly source: 'ref' | 'object',
  ) {
    super(
      `blob ${bucket}/${blob}: ${source === 'ref' ? 'its ref declares' : 'the object store holds'} ${bytes} bytes, more than the ${limit} bytes allowed for this bucket; not downloaded`,
    );
  }
}

/** A KV write lost an optimistic-concurrency race (someone else wrote the key since it was read). */
export class StateConflictError extends Error {
  override readonly name = 'StateConflictError';
  constructor(
    readonly bucket: string,
    readonly key: string,
    /** The revision the writer expected (0 = "key must not exist yet"). */
    readonly expectedRevision: number,
    options?: ErrorOptions,
  ) {
    super(
      expectedRevision === 0
        ? `state ${bucket}/${key}: key already exists (create refused)`
        : `state ${bucket}/${key}: revision ${expectedRevision} is no longer the latest (concurrent update)`,
      options,
    );
  }
}

/** A round whose deadline passed before `quorum` distinct clients delivered an update. */
export class QuorumNotReachedError extends Error {
  override readonly name = 'QuorumNotReachedError';
  constructor(
    readonly jobId: string,
    readonly round: number,
    readonly received: readonly string[],
    readonly missing: readonly string[],
    readonly quorum: number,
    readonly deadlineMs: number,
  ) {
    super(
      `job ${jobId} round ${round}: deadline of ${deadlineMs} ms passed with ${received.length} of ${quorum} ` +
        `required updates (missing: ${missing.join(', ') || 'none'})`,
    );
  }
}

/** The NATS server cannot be reached, or has no JetStream. */
export class TransportUnavailableError extends Error {
  override readonly name = 'TransportUnavailableError';
  constructor(
    readonly servers: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`NATS at ${servers}: ${message}`, options);
  }
}

/** A job id, client id or round number that cannot be used in a subject or resource name. */
export class InvalidIdentifierError extends Error {
  override readonly name = 'InvalidIdentifierError';
  constructor(
    readonly kind: 'job id' | 'client id' | 'round' | 'control verb' | 'secagg step',
    readonly value: unknown,
    reason: string,
  ) {
    super(`invalid ${kind} ${JSON.stringify(value)}: ${reason}`);
  }
}

/**
 * Job and round state in JetStream KV, validated by schema on the way in and out, with revision-checked
 * writes: two aggregator instances (or a restarted one racing its predecessor) cannot silently overwrite
 * each other, and a restarted aggregator reads `job` and continues after `lastCompletedRound`.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, StorageType } from '@nats-io/jetstream';
import { streamConfig } from './connection.js';
import { Kvm, type KV } from '@nats-io/kv';
import type { z } from 'zod';
import { StateConflictError } from './errors.js';
import { decodeMessage, encodeMessage, type JobState } from './messages.js';
import { assertRound } from './subjects.js';
import { jetStreamReplicas } from './replicas.js';

/** Key of the JobState. */
export const JOB_STATE_KEY = 'job' as const;

/** Key of one round's RoundState. */
export function roundStateKey<R extends number>(round: R) {
  return `round.${assertRound(round)}` as const;
}

/** The round a (re)started aggregator should run next, or null when the job is over. */
export function resumeRound(job: Readonly<JobState>): number | null {
  if (job.status === 'completed' || job.status === 'failed' || job.status === 'cancelled') return null;
  const next = job.lastCompletedRound + 1;
  return next < job.totalRounds ? next : null;
}

export interface StateStoreOptions {
  /** KV bucket (created if missing). See `stateBucketName(jobId)`. */
  readonly bucket: string;
  /** Revisions kept per key. Default 5. */
  readonly history?: number;
  /** Default 'file'. */
  readonly storage?: 'file' | 'memory';
  /** JetStream replicas of a bucket this call creates. Default FEDBIOT_JS_REPLICAS, else 1 (replicas.ts). */
  readonly replicas?: number;
}

/** A value with the KV revision it was read at (the token for `update`). */
export interface Versioned<T> {
  readonly value: T;
  readonly revision: number;
}

export interface ModifyOptions {
  /** Read-modify-write attempts before the conflict is thrown. Default 5. */
  readonly maxAttempts?: number;
}

function isConflict(e: unknown): boolean {
  return (
    e instanceof JetStreamApiError &&
    (e.code === JetStreamApiCodes.StreamWrongLastSequence ||
      e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

export class StateStore {
  private constructor(
    readonly bucket: string,
    private readonly kv: KV,
  ) {}

  static async open(nc: NatsConnection, opts: StateStoreOptions): Promise<StateStore> {
    const kvm = new Kvm(nc);
    // Open an existing bucket as it is: `create` with other options would fail on a config mismatch.
    const existing = await streamConfig(nc, `KV_${opts.bucket}`);
    // `open` binds without reading the stream, so it would fall back to STREAM.MSG.GET (key in the request
    // body) even on a direct-get stream; with direct get the key is in the subject, which per-client
    // permissions (auth.ts) can scope to the client's own keys.
    const kv = existing
      ? await kvm.open(opts.bucket, { allow_direct: existing.allow_direct ?? false })
      : await kvm.create(opts.bucket, {
          history: opts.history ?? 5,
          replicas: jetStreamReplicas(opts.replicas),
          storage: opts.storage === 'memory' ? StorageType.Memory : StorageType.File,
        });
    return new StateStore(opts.bucket, kv);
  }

  #where(key: string): string {
    return `kv:${this.bucket}/${key}`;
  }

  /**
   * The current value of `key`, or null when absent/deleted. Throws ProtocolError (naming bucket and key)
   * when the stored bytes do not match `schema`: corrupt state must stop a resume, not be guessed around.
   */
  async get<S extends z.ZodType>(key: string, schema: S): Promise<Versioned<z.output<S>> | null> {
    const e = await this.kv.get(key);
    if (e === null || e.operation !== 'PUT') return null;
    const r = decodeMessage(schema, e.value, this.#where(key));
    if (!r.ok) throw r.error;
    return { value: r.value, revision: e.revision };
  }

  /** Unconditional write; returns the new revision. */
  async put<S extends z.ZodType>(key: string, schema: S, value: z.input<S>): Promise<number> {
    return this.kv.put(key, encodeMessage(schema, value, this.#where(key)));
  }

  /** Writes only if `key` does not exist; StateConflictError (expectedRevision 0) otherwise. */
  async create<S extends z.ZodType>(key: string, schema: S, value: z.input<S>): Promise<number> {
    const bytes = encodeMessage(schema, value, this.#where(key));
    try {
      return await this.kv.create(key, bytes);
    } catch (e) {
      if (isConflict(e)) throw new StateConflictError(this.bucket, key, 0, { cause: e });
      throw e;
    }
  }

  /** Writes only if `key` is still at `revision`; StateConflictError otherwise. Returns the new revision. */
  async update<S extends z.ZodType>(key: string, schema: S, value: z.input<S>, revision: number): Promise<number> {
    const bytes = encodeMessage(schema, value, this.#where(key));
    try {
      return await this.kv.update(key, bytes, revision);
    } catch (e) {
      if (isConflict(e)) throw new StateConflictError(this.bucket, key, revision, { cause: e });
      throw e;
    }
  }

  /**
   * Optimistic read-modify-write: reads `key`, applies `fn` (which receives null when the key is absent and
   * must not have side effects: it may run again), writes revision-checked, and retries on conflict up to
   * `maxAttempts` times before throwing the last StateConflictError.
   */
  async modify<S extends z.ZodType>(
    key: string,
    schema: S,
    fn: (current: z.output<S> | null) => z.input<S>,
    opts: ModifyOptions = {},
  ): Promise<Versioned<z.output<S>>> {
    const attempts = opts.maxAttempts ?? 5;
    let last: unknown;
    for (let i = 0; i < attempts; i++) {
      const cur = await this.get(key, schema);
      const next = fn(cur === null ? null : cur.value);
      try {
        const revision =
          cur === null ? await this.create(key, schema, next) : await this.update(key, schema, next, cur.revision);
        // create/update validated `next` already; parse once more only to return the schema's output type.
        return { value: schema.parse(next) as z.output<S>, revision };
      } catch (e) {
        if (!(e instanceof StateConflictError)) throw e;
        last = e;
      }
    }
    throw last;
  }

  /** Removes the whole bucket (end of a job, tests). */
  async destroy(): Promise<void> {
    await this.kv.destroy();
  }
}

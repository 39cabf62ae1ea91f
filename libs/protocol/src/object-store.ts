/**
 * Reads and writes objects in the JetStream Object Store's own layout (what @nats-io/obj and the nats CLI use:
 * chunks on `$O.<bucket>.C.<nuid>`, one JSON meta entry per object on `$O.<bucket>.M.<base64url(name)>`, rolled up
 * on every write), so a bucket stays readable by either.
 *
 * Why not @nats-io/obj's putBlob/getBlob: it hashes every byte with a pure-JS sha256 (31 ms per 1.35 MB on the
 * 2-core box, against 2 ms for node:crypto, which the BlobStore runs anyway for the content address) and writes
 * 128 KiB chunks with one acknowledged publish at a time. Here the caller's sha256 becomes the object's digest,
 * chunks are as large as the server allows (1 MiB at most) and several publishes are in flight at once (one
 * connection keeps them in order). Bucket creation and deletion stay with @nats-io/obj.
 */
import { createHash } from 'node:crypto';
import { headers, nuid, type NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy, type JetStreamClient, type JetStreamManager, type PubAck } from '@nats-io/jetstream';

/** The meta entry of one object (the server-side ObjectInfo JSON of the NATS object store). */
export interface ObjectMeta {
  readonly name: string;
  readonly bucket: string;
  readonly nuid: string;
  readonly size: number;
  readonly chunks: number;
  /** `SHA-256=<base64url, padded>`. */
  readonly digest: string;
  readonly mtime: string;
  readonly deleted?: boolean;
  readonly options?: { readonly max_chunk_size?: number };
  /**
   * Free-form string pairs (the object store's `metadata` field; the server stores the meta entry as an opaque
   * JSON message, so 2.9 keeps it too). `putFile` records its chunk-hash list here (see file-transfer.ts).
   */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Largest chunk written here; the server's max_payload caps it further. */
export const MAX_CHUNK_BYTES = 1 << 20;
/** Chunk publishes awaiting their acks at once. */
export const PUBLISH_WINDOW = 8;

export const objectStreamName = (bucket: string): string => `OBJ_${bucket}`;
export const chunkSubject = (bucket: string, id: string): string => `$O.${bucket}.C.${id}`;
/** The object store's base64url with padding kept (Node's 'base64url' drops the padding). */
export const base64UrlPadded = (bytes: Uint8Array): string =>
  Buffer.from(bytes).toString('base64').replaceAll('+', '-').replaceAll('/', '_');
export const metaSubject = (bucket: string, name: string): string =>
  `$O.${bucket}.M.${base64UrlPadded(new TextEncoder().encode(name))}`;

/** The object store's digest string for a sha256 given as hex. */
export function objectDigest(sha256Hex: string): string {
  return `SHA-256=${base64UrlPadded(Buffer.from(sha256Hex, 'hex'))}`;
}

/** The sha256 (hex) an object store digest string names, or null when it is not a `SHA-256=` digest. */
export function digestSha256Hex(digest: string): string | null {
  if (!digest.startsWith('SHA-256=')) return null;
  const bytes = Buffer.from(digest.slice('SHA-256='.length), 'base64url');
  return bytes.length === 32 ? bytes.toString('hex') : null;
}

/**
 * Publishes with at most `size` acknowledgements outstanding: enough to keep the connection busy without
 * queueing a whole object in the client's outbound buffer (nats.js keeps a reference to each payload until it is
 * flushed, so payloads must not be reused before their publish settles).
 */
export class PublishWindow {
  readonly #inFlight = new Set<Promise<PubAck>>();
  constructor(
    private readonly js: JetStreamClient,
    private readonly size = PUBLISH_WINDOW,
  ) {}

  /** Starts a publish; resolves once there is room for the next one. Rejects with a failed publish's error. */
  async publish(subject: string, payload: Uint8Array): Promise<void> {
    const p = this.js.publish(subject, payload);
    this.#inFlight.add(p);
    void p.then(
      () => this.#inFlight.delete(p),
      () => {},
    );
    if (this.#inFlight.size >= this.size) await Promise.race(this.#inFlight);
  }

  /** Waits for every publish started so far. */
  async drain(): Promise<void> {
    await Promise.all(this.#inFlight);
  }
}

/** Publishes `meta` as the only entry of its name (a rollup), the step that makes an object visible. */
export async function writeObjectMeta(js: JetStreamClient, meta: ObjectMeta): Promise<void> {
  const h = headers();
  h.set('Nats-Rollup', 'sub'); // keep only this meta entry for the name
  await js.publish(metaSubject(meta.bucket, meta.name), JSON.stringify(meta), { headers: h });
}

/**
 * Purges the chunks of the object with nuid `objectId` and, when `extraTokens` names them, its other chunk subjects (putFile's
 * chunk-hash list). Failing to purge wastes space but loses nothing, so errors are swallowed.
 */
export async function purgeObjectChunks(
  jsm: JetStreamManager,
  bucket: string,
  objectId: string,
  extraTokens: readonly string[] = [],
): Promise<void> {
  for (const id of [objectId, ...extraTokens])
    await jsm.streams.purge(objectStreamName(bucket), { filter: chunkSubject(bucket, id) }).catch(() => {});
}

/** The current meta entry of `name` (deleted ones included), or null when the bucket never held it. */
export async function readObjectMeta(jsm: JetStreamManager, bucket: string, name: string): Promise<ObjectMeta | null> {
  const m = await jsm.streams.getMessage(objectStreamName(bucket), { last_by_subj: metaSubject(bucket, name) });
  return m === null ? null : m.json<ObjectMeta>();
}

/**
 * Writes `bytes` as object `name`, with `sha256Hex` (the caller's hash of exactly these bytes) as its digest.
 * The meta entry goes last, so readers never see a partial object; the chunks of the object it replaces are
 * purged afterwards, and the new chunks are purged again if any publish fails.
 */
export async function putObject(
  nc: NatsConnection,
  js: JetStreamClient,
  jsm: JetStreamManager,
  bucket: string,
  name: string,
  bytes: Uint8Array,
  sha256Hex: string,
  previous: ObjectMeta | null,
): Promise<ObjectMeta> {
  const chunkSize = Math.min(MAX_CHUNK_BYTES, nc.info?.max_payload ?? MAX_CHUNK_BYTES);
  const id = nuid.next();
  const subject = chunkSubject(bucket, id);
  let chunks = 0;
  try {
    const window = new PublishWindow(js);
    for (let off = 0; off < bytes.length; off += chunkSize) {
      await window.publish(subject, bytes.subarray(off, Math.min(off + chunkSize, bytes.length)));
      chunks++;
    }
    await window.drain();
    const meta: ObjectMeta = {
      name,
      bucket,
      nuid: id,
      size: bytes.length,
      chunks,
      digest: objectDigest(sha256Hex),
      mtime: new Date().toISOString(),
      deleted: false,
      options: { max_chunk_size: chunkSize },
    };
    await writeObjectMeta(js, meta);
    if (previous !== null && !previous.deleted && previous.nuid !== id)
      // The old chunks are unreachable now.
      await purgeObjectChunks(jsm, bucket, previous.nuid, extraChunkTokens(previous));
    return meta;
  } catch (e) {
    await purgeObjectChunks(jsm, bucket, id);
    throw e;
  }
}

/** Metadata key under which putFile records the sha256 of its chunk-hash list (file-transfer.ts). */
export const CHUNK_HASHES_KEY = 'fedbiot-chunk-sha256';
/** The chunk subject token of an object's chunk-hash list: derived from its nuid, one token like a nuid. */
export const chunkHashesToken = (id: string): string => `${id}-sha256`;

/** Chunk subjects besides the object's own that belong to it (the chunk-hash list putFile writes). */
export function extraChunkTokens(meta: ObjectMeta): string[] {
  return meta.metadata?.[CHUNK_HASHES_KEY] === undefined ? [] : [chunkHashesToken(meta.nuid)];
}

/**
 * The bytes of the object `meta` describes, concatenated in order through an ordered consumer on its chunk
 * subject. Throws when chunks are missing (none arrives for `chunkTimeoutMs`), when they do not add up to
 * `meta.size`, or when they do not hash to `meta.digest`.
 */
export async function getObject(
  js: JetStreamClient,
  jsm: JetStreamManager,
  meta: ObjectMeta,
  chunkTimeoutMs = 10_000,
): Promise<Uint8Array> {
  if (meta.size === 0) return new Uint8Array(0);
  if (meta.chunks === 1) {
    // One request instead of an ordered consumer's create + fetch: most per-round blobs (the adapter LoRA, the
    // clients' updates) are one chunk.
    const m = await jsm.streams.getMessage(objectStreamName(meta.bucket), {
      last_by_subj: chunkSubject(meta.bucket, meta.nuid),
    });
    if (m === null) throw new Error(`object ${meta.name}: chunk 1 of 1 is missing`);
    return checked(meta, [m.data]);
  }
  const consumer = await js.consumers.get(objectStreamName(meta.bucket), {
    // A plain string: an array is the 2.10 filter_subjects form (our image runs 2.9).
    filter_subjects: chunkSubject(meta.bucket, meta.nuid),
    deliver_policy: DeliverPolicy.All,
  });
  const parts: Uint8Array[] = [];
  let received = 0;
  while (received < meta.chunks) {
    // Ask for exactly the chunks still missing, so the request ends as soon as the last one arrives.
    const batch = await consumer.fetch({ max_messages: Math.min(64, meta.chunks - received), expires: chunkTimeoutMs });
    let got = 0;
    // At most meta.chunks messages are asked for; checked() below verifies their total size and digest.
    for await (const m of batch) {
      parts.push(m.data);
      got++;
    }
    if (got === 0)
      throw new Error(
        `object ${meta.name}: chunk ${received + 1} of ${meta.chunks} did not arrive within ${chunkTimeoutMs} ms`,
      );
    received += got;
  }
  return checked(meta, parts);
}

/** The chunks joined, after checking their total size and digest against the meta entry. */
function checked(meta: ObjectMeta, parts: readonly Uint8Array[]): Uint8Array {
  const hash = createHash('sha256');
  const out = parts.length === 1 ? parts[0]! : new Uint8Array(meta.size);
  let filled = 0;
  for (const p of parts) {
    if (filled + p.length > meta.size)
      throw new Error(`object ${meta.name}: chunks exceed the ${meta.size} bytes its meta entry declares`);
    if (out !== p) out.set(p, filled);
    hash.update(p);
    filled += p.length;
  }
  if (filled !== meta.size)
    throw new Error(`object ${meta.name}: got ${filled} bytes of chunks, its meta entry declares ${meta.size}`);
  const digest = `SHA-256=${base64UrlPadded(hash.digest())}`;
  if (digest !== meta.digest)
    throw new Error(`object ${meta.name}: received a corrupt object, digest ${digest}, meta entry ${meta.digest}`);
  return out;
}

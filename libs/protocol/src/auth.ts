/**
 * Per-identity NATS users for one job: every federated client and every service role gets its own NKey (or
 * user + random password) and subject permissions, rendered as the `authorization { users = [...] }` block of a
 * nats-server config (global account, NATS 2.9+).
 *
 * What a client identity `c` can do (everything else is denied by the server):
 *   - publish its update on `fl.<job>.round.*.update.c` only; it cannot subscribe to any update subject;
 *   - secure aggregation: publish only its own four steps `fl.<job>.round.*.secagg.<step>.c`, read the keys and
 *     unmasking broadcasts and only the share ciphertexts addressed to it (`secagg.shares.c`), never another
 *     client's secagg messages;
 *   - publish its evaluation metrics (AdapEmu on its own test set, numbers only) on `fl.<job>.round.*.metrics.c`
 *     only; it cannot subscribe to any metrics subject;
 *   - write and read only its own KV keys (`update.<r>.c`, `stream.c`), and read the job's `package` key: KV reads go through
 *     `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`, so the key is part of the permission;
 *   - pull its tasks from its own durable consumer `client-c` on the work queue, created through the 2.9
 *     `$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>` form whose filter (`fl.<job>.task.c`) is checked by
 *     the permission, so it cannot see other clients' tasks;
 *   - write its update blobs only to its own update bucket (`updateBucketName(job, c)`, created by the aggregator)
 *     and read only that bucket, the shared broadcast bucket (`blobBucketName(job)`: each round's adapter and
 *     emulator LoRAs) and the package bucket (`packageBucketName(job)`), which it cannot write; the owner bucket
 *     (`ownerBucketName(job)`: alignment optimizer state) it cannot read. Object-store reads go through `$JS.API.STREAM.MSG.GET.OBJ_<bucket>`
 *     with the subject in the body, so one bucket is the finest grain a permission can grant; hence one bucket
 *     per client, and other clients' update buckets are not readable at all (not even message by message);
 *   - receive replies only on its own inbox prefix (`inboxPrefixOf(identity)`, pass it as nats.js `inboxPrefix`):
 *     with the usual `_INBOX.>` any identity could read other identities' JetStream deliveries, blob chunks
 *     included.
 *
 * What stays broad, and why:
 *   - Blobs within a bucket: a client may read every blob of the shared bucket (all of it is broadcast to every
 *     client anyway) and of the package bucket (the emulator package: embeddings, kept emulator layers, adapter
 *     layers, head; never a dropped layer, since the full checkpoint never enters NATS) and write any name in its own update bucket (chunk subjects are random nuids, meta subjects
 *     derive from the content's sha256, so they cannot be scoped in advance); it may purge its own bucket. A
 *     forged or overwritten entry fails sha256 verification on download (IntegrityError), and the aggregator
 *     accepts an update ref only in the sender's own bucket (or the shared one), so a client can spoil only its
 *     own updates. Stream create/update stays with the services: a stream's config picks the subjects it
 *     captures, so a client allowed to create its bucket could capture other clients' traffic.
 *   - Service roles are trusted operators of the job: they get every JetStream API subject of the job's three
 *     shared streams (create, update, delete, purge, consumers); the aggregator and the pooled client-trainer
 *     also those of every client's update bucket (generateJobAuth lists the clients). The aggregator also publishes on every update
 *     subject, because a resumed aggregator replays updates stored in KV (services/common/ports-nats.ts); the pooled
 *     `client-trainer` role publishes every client's update because one replica trains many clients.
 *   - `allow_responses` lets server-alignment and the evaluator reply to requests without a publish grant on
 *     reply subjects (one reply per request, within the server's response window).
 */
import { randomBytes } from 'node:crypto';
import { createUser } from '@nats-io/nkeys';
import {
  SUBJECT_ROOT,
  assertClientId,
  assertJobId,
  PACKAGE_KEY,
  blobBucketName,
  clientConsumerName,
  ownerBucketName,
  packageBucketName,
  stateBucketName,
  taskPattern,
  taskStreamName,
  updateBucketName,
  SECAGG_CLIENT_STEPS,
} from './subjects.js';

export { clientConsumerName };

/** The four service roles of the distributed job. */
export const SERVICE_ROLES = ['aggregator', 'server-alignment', 'evaluator', 'client-trainer'] as const;
export type ServiceRoleName = (typeof SERVICE_ROLES)[number];

/** Subject permissions of one NATS user (nats-server `permissions` block). */
export interface NatsPermissions {
  readonly publish: { readonly allow: readonly string[]; readonly deny: readonly string[] };
  readonly subscribe: { readonly allow: readonly string[]; readonly deny: readonly string[] };
  /** nats-server `allow_responses`: may publish one reply to each request it received. */
  readonly allowResponses: boolean;
}

/** One generated identity. `seed` / `password` are secrets: write them to files, never to logs. */
export interface NatsIdentity {
  /** `client-<id>` or `service-<role>`; also names the inbox prefix. */
  readonly name: string;
  readonly kind: 'client' | 'service';
  /** Client id or service role. */
  readonly subject: string;
  /** nkey: the public key (`U...`); password: the user name. */
  readonly user: string;
  /** NKey seed (`SU...`), the content of the file NATS_CREDS_FILE points at. */
  readonly seed?: string;
  /** Random password (base64url, 24 bytes of entropy), for NATS_PASSWORD_FILE. */
  readonly password?: string;
  /** Pass as nats.js `inboxPrefix` (env NATS_INBOX_PREFIX); the identity may subscribe only below it. */
  readonly inboxPrefix: string;
  readonly permissions: NatsPermissions;
}

export interface JobAuthOptions {
  readonly jobId: string;
  /** Federated client ids; each gets an identity `client-<id>`. */
  readonly clients: readonly string[];
  /** Service roles to create identities for (default all four). */
  readonly services?: readonly ServiceRoleName[];
  /** `nkey` (default): NKey users; `password`: user + random password. */
  readonly credentials?: 'nkey' | 'password';
}

export interface JobAuth {
  readonly identities: readonly NatsIdentity[];
  /** `authorization { users = [...] }`, to include in (or append to) a nats-server config. */
  readonly config: string;
}

/** The reply-inbox prefix of an identity: `_INBOX_<name>` (a single subject token). */
export function inboxPrefixOf(name: string): string {
  return `_INBOX_${name}`;
}

/**
 * JetStream API subjects of the job's three streams, plus the update buckets of `updateClients`, for the trusted
 * service roles. Update buckets are listed per client: a stream name is one subject token, so no wildcard can
 * match `OBJ_fl-updates-...-*`.
 */
function serviceJetStream(jobId: string, updateClients: readonly string[]): string[] {
  const updates = updateClients.map((c) => updateBucketName(jobId, c));
  const buckets = [blobBucketName(jobId), packageBucketName(jobId), ownerBucketName(jobId), ...updates];
  const streams = [taskStreamName(jobId), `KV_${stateBucketName(jobId)}`, ...buckets.map((b) => `OBJ_${b}`)];
  return [
    '$JS.API.INFO',
    // STREAM.NAMES is how the object store and KV check for an existing bucket; it lists names only.
    '$JS.API.STREAM.NAMES',
    ...streams.flatMap((s) => [
      `$JS.API.STREAM.*.${s}`,
      `$JS.API.STREAM.MSG.*.${s}`,
      `$JS.API.DIRECT.GET.${s}`,
      `$JS.API.DIRECT.GET.${s}.>`,
      `$JS.API.CONSUMER.*.${s}`,
      `$JS.API.CONSUMER.*.${s}.>`,
      `$JS.API.CONSUMER.*.*.${s}.>`,
      `$JS.ACK.${s}.>`,
      `$JS.FC.${s}.>`,
    ]),
    `$KV.${stateBucketName(jobId)}.>`,
    ...buckets.map((b) => `$O.${b}.>`),
  ];
}

/**
 * Reading object-store bucket `b`: stream info, meta reads by `STREAM.MSG.GET` (the meta subject is in the request
 * body, hence every message of the bucket is readable), and chunk downloads through ordered consumers created with
 * the filtered create form on chunk subjects (no listing or watch of meta entries). No purge, delete or update.
 */
function bucketRead(b: string): string[] {
  const s = `OBJ_${b}`;
  return [
    `$JS.API.STREAM.INFO.${s}`,
    `$JS.API.STREAM.MSG.GET.${s}`,
    `$JS.API.CONSUMER.CREATE.${s}.*.$O.${b}.C.*`,
    `$JS.API.CONSUMER.MSG.NEXT.${s}.*`,
    `$JS.API.CONSUMER.DELETE.${s}.*`,
    `$JS.API.CONSUMER.INFO.${s}.*`,
  ];
}

/**
 * Writing objects into bucket `b` (chunks, meta; the purge of an overwritten object's old chunks). Not the
 * stream's create or update API: a client that could set its stream's subjects could capture other clients'
 * traffic into it.
 */
function bucketWrite(b: string): string[] {
  return [`$O.${b}.C.*`, `$O.${b}.M.*`, `$JS.API.STREAM.PURGE.OBJ_${b}`];
}

/** The permissions of client `clientId` in job `jobId` (see the module comment). */
export function clientPermissions(jobId: string, clientId: string): NatsPermissions {
  const j = assertJobId(jobId);
  const c = assertClientId(clientId);
  const kv = stateBucketName(j);
  const kvStream = `KV_${kv}`;
  const tasks = taskStreamName(j);
  const consumer = clientConsumerName(c);
  const root = `${SUBJECT_ROOT}.${j}`;
  const inbox = inboxPrefixOf(`client-${c}`);
  return {
    publish: {
      allow: [
        `${root}.round.*.update.${c}`,
        // Secure aggregation: its own four steps only (secAggClientSubject).
        ...SECAGG_CLIENT_STEPS.map((s) => `${root}.round.*.secagg.${s}.${c}`),
        `${root}.round.*.metrics.${c}`,
        '$JS.API.INFO',
        `$JS.API.STREAM.INFO.${kvStream}`,
        `$JS.API.STREAM.INFO.${tasks}`,
        `$KV.${kv}.update.*.${c}`,
        `$KV.${kv}.stream.${c}`,
        `$JS.API.DIRECT.GET.${kvStream}.$KV.${kv}.update.*.${c}`,
        `$JS.API.DIRECT.GET.${kvStream}.$KV.${kv}.stream.${c}`,
        // The job's emulator package ref (PACKAGE_KEY), the one shared key a client reads.
        `$JS.API.DIRECT.GET.${kvStream}.$KV.${kv}.${PACKAGE_KEY}`,
        `$JS.API.CONSUMER.CREATE.${tasks}.${consumer}.${taskPattern(j).slice(0, -1)}${c}`,
        `$JS.API.CONSUMER.INFO.${tasks}.${consumer}`,
        `$JS.API.CONSUMER.MSG.NEXT.${tasks}.${consumer}`,
        `$JS.ACK.${tasks}.${consumer}.>`,
        // Broadcast blobs (each round's adapter and emulator LoRA) and the emulator package: read only. Not the
        // owner bucket (alignment optimizer state): no grant names it.
        ...bucketRead(blobBucketName(j)),
        ...bucketRead(packageBucketName(j)),
        // Its own update bucket (created by the aggregator): read and write; no other client's.
        ...bucketRead(updateBucketName(j, c)),
        ...bucketWrite(updateBucketName(j, c)),
      ],
      // No deny list: a deny on `update.*` would also cover the client's own subject (deny wins in nats-server).
      deny: [],
    },
    subscribe: {
      allow: [
        `${root}.round.*.plan`,
        `${root}.round.*.aligned`,
        `${root}.control.*`,
        `${inbox}.>`,
        // Secure aggregation: the broadcasts, and the share ciphertexts addressed to it alone.
        `${root}.round.*.secagg.keys`,
        `${root}.round.*.secagg.unmask-request`,
        `${root}.round.*.secagg.shares.${c}`,
      ],
      // Explicit, so that a later broadening of `allow` (e.g. to `fl.<job>.>`) still hides other clients' updates,
      // metrics and secagg messages (no deny on `secagg.shares.*`: it would cover the client's own, and deny wins).
      deny: [
        `${root}.round.*.update.*`,
        `${root}.round.*.metrics.*`,
        ...SECAGG_CLIENT_STEPS.map((s) => `${root}.round.*.secagg.${s}.*`),
      ],
    },
    allowResponses: false,
  };
}

/**
 * The permissions of a service role in job `jobId` (see the module comment for what is broad). `clients`: the
 * job's client ids, whose update buckets the aggregator (creates and reads them) and the pooled client-trainer
 * (writes every client's update) get; default none.
 */
export function servicePermissions(
  jobId: string,
  role: ServiceRoleName,
  clients: readonly string[] = [],
): NatsPermissions {
  const j = assertJobId(jobId);
  const root = `${SUBJECT_ROOT}.${j}`;
  const js = serviceJetStream(j, role === 'aggregator' || role === 'client-trainer' ? clients : []);
  const inbox = `${inboxPrefixOf(`service-${role}`)}.>`;
  const p = (publish: string[], subscribe: string[], allowResponses = false): NatsPermissions => ({
    publish: { allow: [...publish, ...js], deny: [] },
    subscribe: { allow: [...subscribe, inbox], deny: [] },
    allowResponses,
  });
  switch (role) {
    case 'aggregator':
      return p(
        [
          `${root}.round.*.plan`,
          `${root}.task.*`,
          `${root}.align`,
          `${root}.round.*.evaluate`,
          // KV replay after a restart republishes stored updates (services/common/ports-nats.ts).
          `${root}.round.*.update.*`,
          ...secAggAggregatorSends(root),
        ],
        [
          `${root}.round.*.update.*`,
          `${root}.round.*.metrics.*`,
          `${root}.round.*.aligned`,
          `${root}.round.*.evaluated`,
          `${root}.control.*`,
          ...SECAGG_CLIENT_STEPS.map((s) => `${root}.round.*.secagg.${s}.*`),
        ],
      );
    case 'server-alignment':
      return p([`${root}.round.*.aligned`], [`${root}.align`, `${root}.control.*`], true);
    case 'evaluator':
      return p(
        [`${root}.round.*.evaluated`],
        [`${root}.round.*.evaluate`, `${root}.round.*.update.*`, `${root}.round.*.plan`, `${root}.control.*`],
        true,
      );
    case 'client-trainer':
      // Pooled: one replica runs many clients' secagg steps (it holds their secrets anyway), hence every client's.
      return p(
        [
          `${root}.round.*.update.*`,
          `${root}.round.*.metrics.*`,
          ...SECAGG_CLIENT_STEPS.map((s) => `${root}.round.*.secagg.${s}.*`),
        ],
        [`${root}.round.*.plan`, `${root}.control.*`, ...secAggAggregatorSends(root)],
      );
  }
}

/** The aggregator's secagg subjects: the keys broadcast, every client's shares, the unmasking request. */
function secAggAggregatorSends(root: string): string[] {
  return [`${root}.round.*.secagg.keys`, `${root}.round.*.secagg.shares.*`, `${root}.round.*.secagg.unmask-request`];
}

function newSecret(kind: 'nkey' | 'password', name: string): { user: string; seed?: string; password?: string } {
  if (kind === 'password') return { user: name, password: randomBytes(24).toString('base64url') };
  const kp = createUser();
  return { user: kp.getPublicKey(), seed: new TextDecoder().decode(kp.getSeed()) };
}

/** Generates one identity per client and service role, with fresh secrets, and the config block admitting them. */
export function generateJobAuth(opts: JobAuthOptions): JobAuth {
  const jobId = assertJobId(opts.jobId);
  const kind = opts.credentials ?? 'nkey';
  const seen = new Set<string>();
  const identities: NatsIdentity[] = [];
  for (const clientId of opts.clients) {
    assertClientId(clientId);
    if (seen.has(clientId)) throw new Error(`clients: ${clientId} is listed twice`);
    seen.add(clientId);
    const name = `client-${clientId}`;
    identities.push({
      name,
      kind: 'client',
      subject: clientId,
      ...newSecret(kind, name),
      inboxPrefix: inboxPrefixOf(name),
      permissions: clientPermissions(jobId, clientId),
    });
  }
  for (const role of opts.services ?? SERVICE_ROLES) {
    if (!(SERVICE_ROLES as readonly string[]).includes(role))
      throw new Error(`services: unknown role ${JSON.stringify(role)} (expected one of ${SERVICE_ROLES.join(', ')})`);
    const name = `service-${role}`;
    identities.push({
      name,
      kind: 'service',
      subject: role,
      ...newSecret(kind, name),
      inboxPrefix: inboxPrefixOf(name),
      permissions: servicePermissions(jobId, role, opts.clients),
    });
  }
  return { identities, config: renderAuthorization(identities) };
}

const q = (s: string): string => JSON.stringify(s);
const list = (xs: readonly string[]): string => `[${xs.map(q).join(', ')}]`;

const dir = (d: { allow: readonly string[]; deny: readonly string[] }): string =>
  `{ allow: ${list(d.allow)}${d.deny.length ? `, deny: ${list(d.deny)}` : ''} }`;

function renderPermissions(p: NatsPermissions): string {
  return (
    `{\n        publish: ${dir(p.publish)}\n        subscribe: ${dir(p.subscribe)}` +
    (p.allowResponses ? `\n        allow_responses: true` : '') +
    `\n      }`
  );
}

/**
 * The `authorization { users = [...] }` block for `identities` (public keys / user names and passwords in it:
 * treat the rendered text as a secret when it holds passwords). Strings are double-quoted, which nats-server
 * reads literally (no `$VAR` expansion).
 */
export function renderAuthorization(identities: readonly NatsIdentity[]): string {
  const users = identities.map((i) => {
    const auth = i.password !== undefined ? `user: ${q(i.user)}, password: ${q(i.password)}` : `nkey: ${q(i.user)}`;
    return `    # ${i.name}\n    { ${auth}\n      permissions: ${renderPermissions(i.permissions)}\n    }`;
  });
  return `authorization {\n  users = [\n${users.join('\n')}\n  ]\n}\n`;
}

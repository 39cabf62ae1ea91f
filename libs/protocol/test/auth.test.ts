/**
 * Per-identity NATS permissions (auth.ts) against a private nats-server started with the generated config, the
 * credential/TLS wiring of connectTransport (credentials.ts), and that a failed connection never prints a secret.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import type { NatsConnection, Msg } from '@nats-io/transport-node';
import { jetstreamManager, AckPolicy } from '@nats-io/jetstream';
import { generateJobAuth, clientConsumerName, type NatsIdentity } from '../src/auth.js';
import { connectTransport } from '../src/connection.js';
import { transportSecurityFromEnv, redactServers, CredentialsError } from '../src/credentials.js';
import {
  ClientMetricsSchema,
  ClientUpdateSchema,
  PROTOCOL_VERSION,
  PackageRefSchema,
  decodeMessage,
  encodeMessage,
} from '../src/messages.js';
import { StateStore } from '../src/state-store.js';
import { BlobStore } from '../src/blob-store.js';
import { WorkQueue } from '../src/work-queue.js';
import {
  PACKAGE_KEY,
  blobBucketName,
  clientMetricsSubject,
  ownerBucketName,
  packageBucketName,
  stateBucketName,
  taskStreamName,
  updateBucketName,
  updateSubject,
} from '../src/subjects.js';
import { task, update } from './fixtures.js';
import { waitFor } from './support/nats.js';
import { connectAs, type Denial } from './support/identity.js';
import {
  checkConfig,
  hasNatsServer,
  startPrivateNats,
  NATS_SERVER_BIN,
  type PrivateNats,
} from './support/nats-server.js';

const skip = !hasNatsServer && `${NATS_SERVER_BIN} not installed`;
const JOB = 'secjob';

test('the generated config passes nats-server -t, with NKeys and with passwords', { skip }, async () => {
  for (const credentials of ['nkey', 'password'] as const) {
    const auth = generateJobAuth({ jobId: JOB, clients: ['alice', 'bob'], credentials });
    assert.equal(auth.identities.length, 6);
    const server = await startPrivateNats(() => auth.config); // startPrivateNats runs `nats-server -t` first
    await server.stop();
  }
  // A broken block is rejected, so the check above can fail.
  const dir = await mkdtemp(join(tmpdir(), 'fl-auth-'));
  try {
    const bad = join(dir, 'bad.conf');
    await writeFile(bad, 'authorization { users = [ { nkey: "UNOTAKEY", permissions: { publish: } } ] }\n');
    assert.notEqual(checkConfig(bad).status, 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('identities: ids are validated, duplicates and unknown roles refused, secrets differ', () => {
  assert.throws(() => generateJobAuth({ jobId: JOB, clients: ['a.b'] }), /client id "a\.b"/);
  assert.throws(() => generateJobAuth({ jobId: JOB, clients: ['a', 'a'] }), /a is listed twice/);
  assert.throws(
    () => generateJobAuth({ jobId: JOB, clients: [], services: ['boss' as 'aggregator'] }),
    /unknown role "boss"/,
  );
  const a = generateJobAuth({ jobId: JOB, clients: ['alice'], credentials: 'password' });
  const b = generateJobAuth({ jobId: JOB, clients: ['alice'], credentials: 'password' });
  assert.notEqual(a.identities[0]!.password, b.identities[0]!.password);
  assert.match(generateJobAuth({ jobId: JOB, clients: ['alice'] }).identities[0]!.seed!, /^SU[A-Z2-7]{56}$/);
});

describe('per-client permissions on a private nats-server', { skip }, () => {
  const auth = generateJobAuth({ jobId: JOB, clients: ['alice', 'bob'] });
  const who = (name: string): NatsIdentity => auth.identities.find((i) => i.name === name)!;
  let server: PrivateNats;
  let agg: { nc: NatsConnection; denials: Denial[] };
  let alice: { nc: NatsConnection; denials: Denial[] };
  const received: Msg[] = [];

  before(async () => {
    server = await startPrivateNats(() => auth.config);
    agg = await connectAs(server, who('service-aggregator'));
    agg.nc.subscribe(`fl.${JOB}.round.*.update.*`, {
      callback: (_e, m) => {
        received.push(m);
      },
    });
    await agg.nc.flush();
    alice = await connectAs(server, who('client-alice'));
  });
  after(async () => {
    await alice?.nc.close();
    await agg?.nc.close();
    await server?.stop();
  });

  test("alice publishing on bob's update subject is denied and never reaches the aggregator", async () => {
    const forged = encodeMessage(ClientUpdateSchema, update(JOB, 'bob', 1), 'test');
    alice.nc.publish(updateSubject(JOB, 1, 'bob'), forged);
    await waitFor('the publish denial', () => alice.denials.some((d) => d.operation === 'publish'));
    assert.deepEqual(
      alice.denials.find((d) => d.operation === 'publish'),
      { operation: 'publish', subject: `fl.${JOB}.round.1.update.bob` },
    );
    await alice.nc.flush();
    await agg.nc.flush();
    assert.equal(received.length, 0);
  });

  test("alice subscribing to bob's updates (or every inbox) is denied", async () => {
    for (const subject of [`fl.${JOB}.round.*.update.bob`, `fl.${JOB}.round.1.update.*`, '_INBOX.>']) {
      const err = await new Promise<Error>((resolve) => {
        alice.nc.subscribe(subject, {
          callback: (e) => {
            if (e) resolve(e);
          },
        });
      });
      assert.equal(err.name, 'PermissionViolationError', subject);
      assert.equal((err as Error & { operation: string }).operation, 'subscription', subject);
      assert.equal((err as Error & { subject: string }).subject, subject);
    }
  });

  test("alice's own update reaches the aggregator", async () => {
    const seen = received.length;
    alice.nc.publish(
      updateSubject(JOB, 2, 'alice'),
      encodeMessage(ClientUpdateSchema, update(JOB, 'alice', 2), 'test'),
    );
    await waitFor('the update at the aggregator', () => received.length > seen);
    const m = received.at(-1)!;
    assert.equal(m.subject, `fl.${JOB}.round.2.update.alice`);
    const d = decodeMessage(ClientUpdateSchema, m.data, m.subject, { jobId: JOB, round: 2, clientId: 'alice' });
    assert.ok(d.ok);
  });

  test("metrics: alice publishes her own AdapEmu metrics; bob's subject and subscribing to any metrics are denied", async () => {
    const got: Msg[] = [];
    const sub = agg.nc.subscribe(`fl.${JOB}.round.*.metrics.*`, { callback: (_e, m) => void got.push(m) });
    await agg.nc.flush();
    const metrics = (clientId: string) =>
      encodeMessage(
        ClientMetricsSchema,
        {
          protocolVersion: 1,
          jobId: JOB,
          round: 1,
          clientId,
          mode: 'adapEmu',
          loss: 1.5,
          accuracy: 0.25,
          tokens: 40,
          items: 4,
          durationMs: 3,
        },
        'test',
      );
    const denied = alice.denials.length;
    alice.nc.publish(clientMetricsSubject(JOB, 1, 'bob'), metrics('bob'));
    alice.nc.publish(clientMetricsSubject(JOB, 1, 'alice'), metrics('alice'));
    await waitFor("alice's metrics at the aggregator", () => got.length > 0);
    await waitFor('the publish denial', () => alice.denials.length > denied);
    assert.deepEqual(alice.denials.slice(denied), [{ operation: 'publish', subject: `fl.${JOB}.round.1.metrics.bob` }]);
    await agg.nc.flush();
    assert.deepEqual(
      got.map((m) => m.subject),
      [`fl.${JOB}.round.1.metrics.alice`],
    );
    const d = decodeMessage(ClientMetricsSchema, got[0]!.data, got[0]!.subject, {
      jobId: JOB,
      round: 1,
      clientId: 'alice',
    });
    assert.ok(d.ok);
    sub.unsubscribe();
    const err = await new Promise<Error>((resolve) => {
      alice.nc.subscribe(`fl.${JOB}.round.*.metrics.*`, {
        callback: (e) => {
          if (e) resolve(e);
        },
      });
    });
    assert.equal(err.name, 'PermissionViolationError');
  });

  test('JetStream: own KV keys only, shared blobs readable, own filtered task consumer only', async () => {
    const bucket = stateBucketName(JOB);
    const aggState = await StateStore.open(agg.nc, { bucket, storage: 'memory' });
    const aggBlobs = await BlobStore.open(agg.nc, { bucket: blobBucketName(JOB), storage: 'memory' });
    const queue = await WorkQueue.open(agg.nc, { jobId: JOB });
    await aggState.put('update.3.bob', ClientUpdateSchema, update(JOB, 'bob', 3));

    const state = await StateStore.open(alice.nc, { bucket });
    await state.put('update.3.alice', ClientUpdateSchema, update(JOB, 'alice', 3));
    assert.equal((await aggState.get('update.3.alice', ClientUpdateSchema))?.value.clientId, 'alice');
    assert.equal((await state.get('update.3.alice', ClientUpdateSchema))?.value.clientId, 'alice');
    await assert.rejects(state.put('update.3.bob', ClientUpdateSchema, update(JOB, 'alice', 3)));
    await assert.rejects(state.get('update.3.bob', ClientUpdateSchema));
    assert.equal((await aggState.get('update.3.bob', ClientUpdateSchema))?.value.clientId, 'bob');

    const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) % 251);
    const ref = await aggBlobs.put(bytes);
    const blobs = await BlobStore.open(alice.nc, { bucket: blobBucketName(JOB) });
    assert.deepEqual(await blobs.get(ref), bytes);

    await queue.enqueue(task(JOB, 'alice', 0));
    await queue.enqueue(task(JOB, 'bob', 0));
    const jsm = await jetstreamManager(alice.nc);
    const stream = taskStreamName(JOB);
    const consumer = clientConsumerName('alice');
    await assert.rejects(
      jsm.consumers.add(stream, {
        durable_name: consumer,
        filter_subject: `fl.${JOB}.task.bob`,
        ack_policy: AckPolicy.Explicit,
      }),
    );
    // A work-queue stream allows no overlapping consumers; the aggregator's pooled `client-trainer` consumer is
    // absent here, as in a deployment of per-client trainers.
    await jsm.consumers.add(stream, {
      durable_name: consumer,
      filter_subject: `fl.${JOB}.task.alice`,
      ack_policy: AckPolicy.Explicit,
    });
    const { jetstream } = await import('@nats-io/jetstream');
    const c = await jetstream(alice.nc).consumers.get(stream, consumer);
    const m = await c.next({ expires: 2000 });
    assert.ok(m, 'alice pulls her task');
    assert.equal(m.subject, `fl.${JOB}.task.alice`);
    await m.ackAck();
  });

  test("update buckets: alice writes hers, the aggregator reads it, bob's stays unreadable to her", async () => {
    const aggBlobs = await BlobStore.open(agg.nc, { bucket: blobBucketName(JOB), storage: 'memory' });
    const [aliceBucket, bobBucket] = [updateBucketName(JOB, 'alice'), updateBucketName(JOB, 'bob')];
    assert.equal(aliceBucket, 'fl-updates-6-secjob-alice');
    for (const b of [aliceBucket, bobBucket]) await aggBlobs.ensureBucket(b);
    const bob = await connectAs(server, who('client-bob'));
    try {
      const aliceBlobs = await BlobStore.open(alice.nc, { bucket: blobBucketName(JOB) });
      const bobBlobs = await BlobStore.open(bob.nc, { bucket: blobBucketName(JOB) });
      // Broadcast blobs stay readable (300 kB: several 128 KiB chunks through the ordered consumer).
      const broadcast = new Uint8Array(300_000).map((_, i) => (i * 13) % 251);
      const broadcastRef = await aggBlobs.put(broadcast);
      assert.deepEqual(await aliceBlobs.get(broadcastRef), broadcast);

      const mine = broadcast.map((v) => 255 - v);
      const mineRef = await aliceBlobs.put(mine, { bucket: aliceBucket });
      assert.equal(mineRef.bucket, aliceBucket);
      assert.deepEqual(await aggBlobs.get(mineRef), mine);
      const bobs = broadcast.map((v) => (v + 1) % 256);
      const bobRef = await bobBlobs.put(bobs, { bucket: bobBucket });
      assert.deepEqual(await aggBlobs.get(bobRef), bobs);

      // Through the object store: opening bob's bucket (stream info) is denied, so is any read of it.
      await assert.rejects(aliceBlobs.get(bobRef));
      // Raw, as a crafted client would: message 1 of bob's bucket by sequence. The same request on her own bucket
      // answers, so the denial is the permission, not a malformed request.
      const rawGet = (bucket: string): Promise<Msg> =>
        alice.nc.request(`$JS.API.STREAM.MSG.GET.OBJ_${bucket}`, JSON.stringify({ seq: 1 }), { timeout: 2000 });
      const own = JSON.parse(new TextDecoder().decode((await rawGet(aliceBucket)).data)) as {
        message?: { subject: string };
      };
      assert.match(own.message?.subject ?? '', new RegExp(`^\\$O\\.${aliceBucket}\\.C\\.`));
      await assert.rejects(rawGet(bobBucket));
      await waitFor('the denial of the raw get', () =>
        alice.denials.some((d) => d.subject === `$JS.API.STREAM.MSG.GET.OBJ_${bobBucket}`),
      );
      // Nor can she write into bob's bucket or the shared one, or create a stream (which could capture subjects).
      await assert.rejects(aliceBlobs.put(new Uint8Array([1, 2, 3]), { bucket: bobBucket }));
      await assert.rejects(aliceBlobs.put(new Uint8Array([1, 2, 3])));
      const jsm = await jetstreamManager(alice.nc, { timeout: 2000 });
      await assert.rejects(jsm.streams.add({ name: 'CAPTURE', subjects: [`fl.${JOB}.round.*.update.*`] }));
      assert.deepEqual(agg.denials, []);
    } finally {
      await bob.nc.close();
    }
  });

  test("the model owner's side: alice reads the emulator package and its key, nothing of the owner's state", async () => {
    const aggBlobs = await BlobStore.open(agg.nc, { bucket: blobBucketName(JOB), storage: 'memory' });
    const aggState = await StateStore.open(agg.nc, { bucket: stateBucketName(JOB), storage: 'memory' });
    for (const b of [packageBucketName(JOB), ownerBucketName(JOB)]) await aggBlobs.ensureBucket(b);
    const weights = new Uint8Array(200_000).map((_, i) => (i * 11) % 251);
    const pkgRef = await aggBlobs.put(weights, { bucket: packageBucketName(JOB) });
    const optRef = await aggBlobs.put(
      weights.map((v) => 255 - v),
      { bucket: ownerBucketName(JOB) },
    );
    const pkgKey = {
      protocolVersion: PROTOCOL_VERSION,
      jobId: JOB,
      manifest: pkgRef,
      files: [{ path: 'model.safetensors', ref: pkgRef }],
    };
    await aggState.put(PACKAGE_KEY, PackageRefSchema, pkgKey);
    await aggState.put('align', z.unknown(), { optimizer: optRef });
    await aggState.put('job', z.unknown(), { status: 'running' });

    const blobs = await BlobStore.open(alice.nc, { bucket: blobBucketName(JOB) });
    const state = await StateStore.open(alice.nc, { bucket: stateBucketName(JOB) });
    // Allowed: the package (streamed to a file, too) and the package key.
    assert.deepEqual(await blobs.get(pkgRef), weights);
    const dir = await mkdtemp(join(tmpdir(), 'auth-pkg-'));
    try {
      await blobs.getFile(pkgRef, join(dir, 'model.safetensors'));
      assert.deepEqual(new Uint8Array(await readFile(join(dir, 'model.safetensors'))), weights);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    assert.deepEqual((await state.get(PACKAGE_KEY, PackageRefSchema))?.value, pkgKey);
    // Denied by the server: the owner bucket (read, raw read, write), the owner's KV keys, writes to the package.
    await assert.rejects(blobs.get(optRef));
    await assert.rejects(
      alice.nc.request(`$JS.API.STREAM.MSG.GET.OBJ_${ownerBucketName(JOB)}`, JSON.stringify({ seq: 1 }), {
        timeout: 2000,
      }),
    );
    await waitFor('the denial of the owner bucket', () =>
      alice.denials.some((d) => d.subject === `$JS.API.STREAM.MSG.GET.OBJ_${ownerBucketName(JOB)}`),
    );
    await assert.rejects(blobs.put(new Uint8Array([1, 2, 3]), { bucket: ownerBucketName(JOB) }));
    await assert.rejects(blobs.put(new Uint8Array([1, 2, 3]), { bucket: packageBucketName(JOB) }));
    await assert.rejects(state.get('align', z.unknown()));
    await assert.rejects(state.get('job', z.unknown()));
    await assert.rejects(state.put(PACKAGE_KEY, PackageRefSchema, pkgKey));
    assert.deepEqual(agg.denials, []);
  });
});

test(
  'a failed connection never shows the password, in the error or in what a logger would print',
  { skip },
  async () => {
    const auth = generateJobAuth({ jobId: JOB, clients: ['alice'], credentials: 'password' });
    const server = await startPrivateNats(() => auth.config);
    try {
      const alice = auth.identities.find((i) => i.name === 'client-alice')!;
      const wrong = `${alice.password!}-wrong-Secret-42`;
      const file = join(server.dir, 'pw');
      await writeFile(file, `${wrong}\n`);
      const cases: [string, Parameters<typeof connectTransport>[1]][] = [
        [server.url, { env: { NATS_USER: alice.user, NATS_PASSWORD: wrong, NATS_INBOX_PREFIX: alice.inboxPrefix } }],
        [
          server.url,
          { env: { NATS_USER: alice.user, NATS_PASSWORD_FILE: file, NATS_INBOX_PREFIX: alice.inboxPrefix } },
        ],
        [
          `nats://${alice.user}:${encodeURIComponent(wrong)}@127.0.0.1:${server.port}`,
          { env: { NATS_INBOX_PREFIX: alice.inboxPrefix } },
        ],
      ];
      for (const [url, opts] of cases) {
        const e = await connectTransport(url, { timeoutMs: 2000, ...opts }).then(
          () => assert.fail('connected with a wrong password'),
          (err: unknown) => err as Error,
        );
        assert.equal(e.name, 'TransportUnavailableError');
        // With the credentials inside the URL the client reported "connection refused" instead of the server's
        // -ERR in about a third of the runs (observed in CI and locally, not explained yet); what this test is
        // about, that no secret is printed, is asserted for every case below.
        if (!url.includes('@')) assert.match(e.message, /Authorization Violation/i);
        for (const printed of [e.message, String(e), e.stack ?? '', inspect(e, { depth: 10 }), JSON.stringify(e)]) {
          assert.ok(!printed.includes(wrong) && !printed.includes('Secret-42'), `secret printed: ${printed}`);
          assert.ok(!printed.includes(alice.password!), 'real password printed');
        }
      }
      // The right password through the file works (trailing newline stripped).
      await writeFile(file, `${alice.password!}\n`);
      const nc = await connectTransport(server.url, {
        env: { NATS_USER: alice.user, NATS_PASSWORD_FILE: file, NATS_INBOX_PREFIX: alice.inboxPrefix },
      });
      await nc.close();
    } finally {
      await server.stop();
    }
  },
);

test('transportSecurityFromEnv: names the variable, never the secret', () => {
  assert.deepEqual(transportSecurityFromEnv({}), {});
  assert.throws(
    () => transportSecurityFromEnv({ NATS_PASSWORD: 'pw-XYZ' }),
    (e: Error) => {
      assert.ok(e instanceof CredentialsError);
      assert.match(e.message, /^NATS_PASSWORD: needs NATS_USER/);
      assert.ok(!e.message.includes('pw-XYZ'));
      return true;
    },
  );
  assert.throws(() => transportSecurityFromEnv({ NATS_USER: 'u' }), /NATS_USER: needs NATS_PASSWORD/);
  assert.throws(
    () => transportSecurityFromEnv({ NATS_CREDS_FILE: '/nonexistent/x.nk' }),
    /NATS_CREDS_FILE: cannot read \/nonexistent\/x\.nk \(ENOENT\)/,
  );
  assert.throws(() => transportSecurityFromEnv({ NATS_TLS_CERT_FILE: '/x' }), /NATS_TLS_KEY_FILE: client certificate/);
  assert.equal(redactServers('nats://u:p@h:1,tls://a:b@c:2'), 'nats://***@h:1,tls://***@c:2');
  assert.equal(redactServers('nats://127.0.0.1:4222'), 'nats://127.0.0.1:4222');
});

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

test(
  'TLS: connects with NATS_TLS_CA_FILE, fails without it',
  { skip: skip || (!hasOpenssl && 'openssl not installed') },
  async () => {
    const server = await startPrivateNats((dir) => {
      const run = (args: string[]): void => {
        const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
      };
      run([
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=test-ca',
        '-keyout',
        'ca.key',
        '-out',
        'ca.crt',
      ]);
      run([
        'req',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-subj',
        '/CN=127.0.0.1',
        '-keyout',
        'server.key',
        '-out',
        'server.csr',
      ]);
      const ext = join(dir, 'ext.cnf');
      spawnSync('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ${JSON.stringify(ext)}`]);
      run([
        'x509',
        '-req',
        '-in',
        'server.csr',
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '1',
        '-extfile',
        ext,
        '-out',
        'server.crt',
      ]);
      assert.ok(existsSync(join(dir, 'server.crt')));
      return `tls { cert_file: ${JSON.stringify(join(dir, 'server.crt'))}, key_file: ${JSON.stringify(join(dir, 'server.key'))} }\n`;
    });
    try {
      const nc = await connectTransport(server.url, { env: { NATS_TLS_CA_FILE: join(server.dir, 'ca.crt') } });
      assert.ok(nc.info?.tls_required, 'the server requires TLS');
      await nc.close();
      await assert.rejects(
        connectTransport(server.url, { env: {}, timeoutMs: 2000 }),
        /TransportUnavailableError|NATS at/,
      );
    } finally {
      await server.stop();
    }
  },
);

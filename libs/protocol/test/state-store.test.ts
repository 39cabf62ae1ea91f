import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { StateStore, JOB_STATE_KEY, resumeRound, roundStateKey } from '../src/state-store.js';
import { JobStateSchema, RoundStateSchema, type JobState } from '../src/messages.js';
import { ProtocolError, StateConflictError } from '../src/errors.js';
import { stateBucketName } from '../src/subjects.js';
import { deleteJobResources } from '../src/connection.js';
import { connectOrFail, uniqueJobId } from './support/nats.js';
import { fakeRef } from './fixtures.js';

let nc: NatsConnection;
const jobId = uniqueJobId('state');
const bucket = stateBucketName(jobId);

const job = (over: Partial<JobState> = {}): JobState => ({
  protocolVersion: 1,
  jobId,
  status: 'running',
  totalRounds: 10,
  lastCompletedRound: -1,
  model: fakeRef(),
  adapterLora: null,
  emulatorLora: null,
  message: null,
  updatedAt: 1_800_000_000_000,
  ...over,
});

before(async () => {
  nc = await connectOrFail();
});
after(async () => {
  if (nc !== undefined) {
    await deleteJobResources(nc, jobId);
    await nc.close();
  }
});

test('create refuses an existing key; update with a stale revision is a conflict naming the key', async () => {
  const a = await StateStore.open(nc, { bucket, storage: 'memory' });
  const rev1 = await a.create(JOB_STATE_KEY, JobStateSchema, job());
  await assert.rejects(a.create(JOB_STATE_KEY, JobStateSchema, job()), (e: unknown) => {
    assert.ok(e instanceof StateConflictError);
    assert.equal(e.expectedRevision, 0);
    assert.match(e.message, new RegExp(`state ${bucket}/job: key already exists`));
    return true;
  });
  const rev2 = await a.update(JOB_STATE_KEY, JobStateSchema, job({ lastCompletedRound: 0 }), rev1);
  assert.ok(rev2 > rev1);
  // A second writer still holding rev1 loses.
  await assert.rejects(a.update(JOB_STATE_KEY, JobStateSchema, job({ lastCompletedRound: 5 }), rev1), (e: unknown) => {
    assert.ok(e instanceof StateConflictError);
    assert.equal(e.key, 'job');
    assert.equal(e.expectedRevision, rev1);
    assert.match(e.message, /revision \d+ is no longer the latest/);
    return true;
  });
  const cur = await a.get(JOB_STATE_KEY, JobStateSchema);
  assert.equal(cur?.revision, rev2);
  assert.equal(cur?.value.lastCompletedRound, 0);
});

test('concurrent modify() calls retry on conflict and lose no increment', async (t) => {
  const key = roundStateKey(1);
  // Three aggregator instances, each on its own connection.
  const conns = await Promise.all([1, 2, 3].map(() => connectOrFail()));
  t.after(() => Promise.all(conns.map((c) => c.close())));
  const writers = await Promise.all(conns.map((c) => StateStore.open(c, { bucket })));
  const base = {
    protocolVersion: 1 as const,
    jobId,
    round: 1,
    phase: 'collecting' as const,
    clients: ['c0', 'c1', 'c2', 'c3', 'c4', 'c5'],
    received: [] as string[],
    adapterLora: null,
    startedAt: 1,
    updatedAt: 1,
  };
  await writers[0]!.put(key, RoundStateSchema, base);
  // Each writer records two clients; without revision checks some appends would be overwritten.
  await Promise.all(
    writers.flatMap((w, i) =>
      [0, 1].map((j) =>
        w.modify(key, RoundStateSchema, (cur) => ({ ...cur!, received: [...cur!.received, `c${2 * i + j}`] }), {
          maxAttempts: 20,
        }),
      ),
    ),
  );
  const final = await writers[0]!.get(key, RoundStateSchema);
  assert.deepEqual(final!.value.received.toSorted(), base.clients);
});

test('a restarted aggregator (new connection) resumes after the last completed round', async () => {
  const first = await StateStore.open(nc, { bucket });
  await first.modify(JOB_STATE_KEY, JobStateSchema, (cur) => ({
    ...cur!,
    lastCompletedRound: 3,
    adapterLora: fakeRef(undefined, 'e'),
  }));
  const nc2 = await connectOrFail();
  try {
    const restarted = await StateStore.open(nc2, { bucket });
    const state = await restarted.get(JOB_STATE_KEY, JobStateSchema);
    assert.equal(state?.value.lastCompletedRound, 3);
    assert.equal(resumeRound(state!.value), 4);
    assert.equal(state?.value.adapterLora?.sha256, 'e'.repeat(64));
  } finally {
    await nc2.close();
  }
  assert.equal(resumeRound(job({ lastCompletedRound: 9 })), null);
  assert.equal(resumeRound(job({ status: 'cancelled' })), null);
});

test('a corrupt stored value is a ProtocolError naming bucket and key, absent keys are null', async () => {
  const store = await StateStore.open(nc, { bucket });
  const raw = await new Kvm(nc).open(bucket);
  await raw.put('round.7', '{"protocolVersion":1,"jobId":"x"}');
  await assert.rejects(store.get('round.7', RoundStateSchema), (e: unknown) => {
    assert.ok(e instanceof ProtocolError);
    assert.equal(e.subject, `kv:${bucket}/round.7`);
    assert.ok(e.issues.some((i) => i.path === 'phase'));
    return true;
  });
  assert.equal(await store.get('round.8', RoundStateSchema), null);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ClientUpdateSchema,
  RoundPlanSchema,
  TrainTaskSchema,
  JobStateSchema,
  decodeMessage,
  encodeMessage,
  formatPath,
} from '../src/messages.js';
import { ProtocolError, InvalidIdentifierError } from '../src/errors.js';
import {
  blobBucketName,
  clientUpdatePermission,
  controlSubject,
  parseUpdateSubject,
  planSubject,
  roundUpdatesPattern,
  stateBucketName,
  taskStreamName,
  updateSubject,
} from '../src/subjects.js';
import { fakeRef, task, training, update } from './fixtures.js';

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const SUBJ = 'fl.job1.round.3.update.alice';

function expectError<T>(r: { ok: true; value: T } | { ok: false; error: ProtocolError }): ProtocolError {
  assert.equal(r.ok, false, 'expected a decode failure');
  if (r.ok) throw new Error('unreachable');
  assert.ok(r.error instanceof ProtocolError);
  return r.error;
}

test('subject builders produce the documented subjects and literal types', () => {
  const s: 'fl.job1.round.3.update.alice' = updateSubject('job1', 3, 'alice');
  assert.equal(s, SUBJ);
  const p: 'fl.job1.round.0.plan' = planSubject('job1', 0);
  assert.equal(p, 'fl.job1.round.0.plan');
  assert.equal(roundUpdatesPattern('job1', 3), 'fl.job1.round.3.update.*');
  assert.equal(clientUpdatePermission('job1', 'alice'), 'fl.job1.round.*.update.alice');
  assert.equal(controlSubject('job1', 'pause'), 'fl.job1.control.pause');
  assert.equal(taskStreamName('job1'), 'FL_TASKS_job1');
  assert.equal(stateBucketName('job1'), 'fl-state-job1');
  assert.equal(blobBucketName('job1'), 'fl-blobs-job1');
  assert.deepEqual(parseUpdateSubject(SUBJ), { jobId: 'job1', round: 3, clientId: 'alice' });
  assert.equal(parseUpdateSubject('fl.job1.round.03.update.alice'), null);
  assert.equal(parseUpdateSubject('fl.job1.round.3.plan'), null);
});

test('unsafe ids and rounds are refused with the offending value in the message', () => {
  for (const bad of ['a.b', 'a*', '>', 'has space', '', '-lead', 'x'.repeat(65)]) {
    assert.throws(
      () => updateSubject('job1', 1, bad),
      (e: unknown) => {
        assert.ok(e instanceof InvalidIdentifierError);
        assert.equal(e.kind, 'client id');
        assert.ok(e.message.includes(`invalid client id ${JSON.stringify(bad)}`), e.message);
        return true;
      },
    );
  }
  assert.throws(() => planSubject('job.1', 0), /invalid job id "job.1"/);
  assert.throws(() => planSubject('job1', -1), /invalid round -1/);
  assert.throws(() => planSubject('job1', 1.5), /invalid round 1.5/);
  assert.throws(() => controlSubject('job1', 'reboot' as 'pause'), /invalid control verb "reboot"/);
});

test('a valid update decodes to the same value', () => {
  const u = update('job1', 'alice', 3);
  const r = decodeMessage(ClientUpdateSchema, enc(u), SUBJ, { jobId: 'job1', round: 3, clientId: 'alice' });
  assert.ok(r.ok);
  assert.deepEqual(r.value, u);
});

test('schema violations name the subject, the field path and the reason', () => {
  const bad = { ...update('job1', 'alice', 3), adapterLora: { ...fakeRef(), sha256: 'XYZ' }, examples: -1 };
  const err = expectError(decodeMessage(ClientUpdateSchema, enc(bad), SUBJ));
  assert.equal(err.subject, SUBJ);
  assert.deepEqual(
    err.issues.map((i) => i.path),
    ['adapterLora.sha256', 'examples'],
  );
  assert.match(err.message, /^invalid message on fl\.job1\.round\.3\.update\.alice: /);
  assert.match(err.message, /adapterLora\.sha256: expected 64 lowercase hex characters/);
  assert.match(err.message, /examples: .*>=0/);
});

test('array indices, unknown keys, missing fields and wrong versions are reported precisely', () => {
  const plan = {
    protocolVersion: 1,
    jobId: 'job1',
    round: 0,
    clients: ['alice', 'bob', 'alice'],
    quorum: 4,
    deadlineAt: 1,
    model: fakeRef(),
    adapterLora: fakeRef(),
    emulatorLora: fakeRef(),
    training: { ...training, lr: 1 },
  };
  const err = expectError(decodeMessage(RoundPlanSchema, enc(plan), 'fl.job1.round.0.plan'));
  const byPath = new Map(err.issues.map((i) => [i.path, i.reason]));
  assert.match(byPath.get('clients[2]') ?? '', /duplicate id "alice"/);
  assert.match(byPath.get('training') ?? '', /Unrecognized key: "lr"/);
  // The quorum check runs only on an otherwise valid plan; fix the rest and it shows up.
  const err2 = expectError(
    decodeMessage(RoundPlanSchema, enc({ ...plan, clients: ['alice', 'bob'], training }), 'fl.job1.round.0.plan'),
  );
  assert.deepEqual(err2.issues, [{ path: 'quorum', reason: 'quorum 4 exceeds the 2 planned clients' }]);

  const { meanLoss: _drop, ...missing } = update('job1', 'alice', 3);
  assert.equal(expectError(decodeMessage(ClientUpdateSchema, enc(missing), SUBJ)).issues[0]?.path, 'meanLoss');
  const v2 = expectError(
    decodeMessage(ClientUpdateSchema, enc({ ...update('job1', 'alice', 3), protocolVersion: 2 }), SUBJ),
  );
  assert.deepEqual(v2.issues, [
    { path: 'protocolVersion', reason: 'unsupported protocolVersion 2 (this build speaks 1)' },
  ]);
});

test('non-JSON, non-UTF-8 and non-object bytes become ProtocolErrors, never throws', () => {
  for (const bytes of [
    new TextEncoder().encode('{"a":'),
    new Uint8Array([0xff, 0xfe]),
    enc(null),
    enc([1]),
    new Uint8Array(),
  ]) {
    const err = expectError(decodeMessage(TrainTaskSchema, bytes, 'fl.job1.task.alice'));
    assert.equal(err.subject, 'fl.job1.task.alice');
    assert.equal(err.issues[0]?.path, '');
  }
});

test('a body that contradicts its subject (impersonation, wrong round) is rejected', () => {
  const err = expectError(
    decodeMessage(ClientUpdateSchema, enc(update('job1', 'mallory', 2)), SUBJ, {
      jobId: 'job1',
      round: 3,
      clientId: 'alice',
    }),
  );
  assert.deepEqual(
    err.issues.map((i) => i.path),
    ['round', 'clientId'],
  );
  assert.match(err.message, /clientId: is "mallory" but the subject says "alice"/);
});

test('the NestJS NATS envelope {pattern, data} is unwrapped only when pattern is this subject', () => {
  const u = update('job1', 'alice', 3);
  const r = decodeMessage(ClientUpdateSchema, enc({ pattern: SUBJ, data: u }), SUBJ);
  assert.ok(r.ok);
  assert.deepEqual(r.value, u);
  expectError(decodeMessage(ClientUpdateSchema, enc({ pattern: 'fl.other', data: u }), SUBJ));
});

test('encodeMessage refuses invalid outgoing values, naming the subject', () => {
  const bytes = encodeMessage(TrainTaskSchema, task('job1', 'alice'), 'fl.job1.task.alice');
  assert.deepEqual(JSON.parse(new TextDecoder().decode(bytes)), task('job1', 'alice'));
  assert.throws(
    () => encodeMessage(JobStateSchema, { protocolVersion: 1, jobId: 'job1' } as never, 'kv:b/job'),
    (e: unknown) => e instanceof ProtocolError && e.subject === 'kv:b/job' && e.issues.some((i) => i.path === 'status'),
  );
  assert.equal(formatPath(['a', 0, 'b', 12]), 'a[0].b[12]');
});

/** The alignment call (aggregator -> server-alignment on `fl.<job>.align`): its subject and its id checks. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AlignReplySchema, AlignRequestSchema, decodeMessage, encodeMessage } from '../src/messages.js';
import { alignSubject } from '../src/subjects.js';
import { fakeRef } from './fixtures.js';

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const request = { protocolVersion: 1 as const, jobId: 'job1', call: 2, adapterLora: fakeRef(), steps: 5 };
const ok = {
  protocolVersion: 1,
  jobId: 'job1',
  call: 2,
  emulatorLora: fakeRef(),
  loss: 1,
  l2: 0.5,
  kl: 0.25,
  steps: 5,
};

test('alignSubject is fl.<job>.align and refuses an unsafe job id', () => {
  const s: 'fl.job1.align' = alignSubject('job1');
  assert.equal(s, 'fl.job1.align');
  assert.throws(() => alignSubject('job.1'), /invalid job id "job.1"/);
});

test('an alignment request and its replies decode; ids are checked like every protocol message', () => {
  const subject = alignSubject('job1');
  const r = decodeMessage(AlignRequestSchema, enc(request), subject, { jobId: 'job1' });
  assert.ok(r.ok);
  assert.deepEqual(r.value, request);
  for (const reply of [ok, { protocolVersion: 1, jobId: 'job1', error: 'not ready' }])
    assert.ok(decodeMessage(AlignReplySchema, enc(reply), `reply to ${subject}`, { jobId: 'job1' }).ok);
  // Another job's request on this job's subject, and a reply from another job, are rejected.
  const other = decodeMessage(AlignRequestSchema, enc({ ...request, jobId: 'job2' }), subject, { jobId: 'job1' });
  assert.ok(!other.ok && /jobId: is "job2" but the subject says "job1"/.test(other.error.message));
  assert.ok(!decodeMessage(AlignReplySchema, enc({ ...ok, jobId: 'job2' }), subject, { jobId: 'job1' }).ok);
  // A job id that is not a safe token is refused by the schema itself, in either direction.
  for (const jobId of ['a.b', 'a*', '', 'x'.repeat(65)]) {
    const bad = decodeMessage(AlignRequestSchema, enc({ ...request, jobId }), subject);
    assert.ok(!bad.ok && /jobId: not a safe id/.test(bad.error.message), jobId);
    assert.ok(!decodeMessage(AlignReplySchema, enc({ ...ok, jobId }), subject).ok, jobId);
  }
  assert.throws(() => encodeMessage(AlignRequestSchema, { ...request, call: -1 }, subject), /call/);
  assert.ok(!decodeMessage(AlignRequestSchema, enc({ ...request, extra: 1 }), subject).ok, 'unknown keys');
});

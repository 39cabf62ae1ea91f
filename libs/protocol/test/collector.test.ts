import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/transport-node';
import { collectUpdates, type DuplicateUpdate, type LateUpdate, type RejectedUpdate } from '../src/collector.js';
import { ClientUpdateSchema } from '../src/messages.js';
import { QuorumNotReachedError } from '../src/errors.js';
import { publishMessage } from '../src/publish.js';
import { updateSubject } from '../src/subjects.js';
import { connectOrFail, uniqueJobId, waitFor } from './support/nats.js';
import { update } from './fixtures.js';

let nc: NatsConnection;
/** Each client publishes on its own connection, as separate trainers would. */
let clientConn: NatsConnection;
const quiet = { warn: () => undefined };

before(async () => {
  nc = await connectOrFail();
  clientConn = await connectOrFail();
});
after(async () => {
  await clientConn?.close();
  await nc?.close();
});

function send(jobId: string, round: number, clientId: string, examples = 10): void {
  publishMessage(
    clientConn,
    updateSubject(jobId, round, clientId),
    ClientUpdateSchema,
    update(jobId, clientId, round, examples),
  );
}

test('resolves as soon as every planned client delivered, keeping the first of duplicates', async () => {
  const jobId = uniqueJobId('all');
  const dups: DuplicateUpdate[] = [];
  const c = await collectUpdates(nc, {
    jobId,
    round: 4,
    expected: ['a', 'b', 'c'],
    quorum: 2,
    deadlineMs: 10_000,
    onDuplicate: (d) => dups.push(d),
    logger: quiet,
  });
  send(jobId, 4, 'b', 1);
  send(jobId, 4, 'b', 99); // duplicate: ignored
  send(jobId, 4, 'a', 2);
  send(jobId, 4, 'c', 3);
  await clientConn.flush();
  const r = await c.result;
  await c.close();
  assert.equal(r.closedBy, 'all');
  assert.ok(r.elapsedMs < 5000, `closed early, after ${r.elapsedMs} ms`);
  assert.deepEqual(r.missing, []);
  assert.deepEqual(
    r.updates.map((u) => [u.clientId, u.examples]),
    [
      ['b', 1],
      ['a', 2],
      ['c', 3],
    ],
  );
  assert.deepEqual(dups, [{ clientId: 'b', round: 4 }]);
});

test('closes at the deadline with quorum, reports the missing client and its late update', async () => {
  const jobId = uniqueJobId('quorum');
  const late: LateUpdate[] = [];
  const c = await collectUpdates(nc, {
    jobId,
    round: 0,
    expected: ['a', 'b', 'slow'],
    quorum: 2,
    deadlineMs: 400,
    onLate: 'staleness-weighted',
    onLateUpdate: (l) => late.push(l),
    logger: quiet,
  });
  send(jobId, 0, 'a');
  send(jobId, 0, 'b');
  const r = await c.result;
  assert.equal(r.closedBy, 'deadline');
  assert.ok(r.elapsedMs >= 390, `closed after ${r.elapsedMs} ms, deadline 400`);
  assert.deepEqual(r.missing, ['slow']);
  assert.deepEqual(
    r.updates.map((u) => u.clientId),
    ['a', 'b'],
  );

  send(jobId, 0, 'slow', 7);
  await waitFor('the late update', () => late.length === 1);
  assert.equal(late[0]!.clientId, 'slow');
  assert.equal(late[0]!.kept, true);
  assert.equal(late[0]!.update.examples, 7);
  assert.ok(late[0]!.lateByMs >= 0);
  assert.deepEqual(
    c.takeLate().map((l) => l.clientId),
    ['slow'],
  );
  assert.deepEqual(c.takeLate(), [], 'takeLate drains');
  await c.close();
});

test('fails with a clear error when the deadline passes below quorum; late ones are still reported, discarded', async () => {
  const jobId = uniqueJobId('noquorum');
  const late: LateUpdate[] = [];
  const c = await collectUpdates(nc, {
    jobId,
    round: 2,
    expected: ['a', 'b', 'c'],
    quorum: 2,
    deadlineMs: 300,
    onLateUpdate: (l) => late.push(l),
    logger: quiet,
  });
  send(jobId, 2, 'c');
  await assert.rejects(c.result, (e: unknown) => {
    assert.ok(e instanceof QuorumNotReachedError);
    assert.deepEqual(e.received, ['c']);
    assert.deepEqual(e.missing, ['a', 'b']);
    assert.match(
      e.message,
      new RegExp(`job ${jobId} round 2: deadline of 300 ms passed with 1 of 2 required updates \\(missing: a, b\\)`),
    );
    return true;
  });
  send(jobId, 2, 'a');
  await waitFor('the late update', () => late.length === 1);
  assert.deepEqual(
    late.map((l) => [l.clientId, l.kept]),
    [['a', false]],
  );
  assert.deepEqual(c.takeLate(), [], "'discard' keeps nothing");
  await c.close();
});

test('malformed, impersonating, unplanned and other-round messages are rejected without disturbing the round', async () => {
  const jobId = uniqueJobId('reject');
  const rejected: RejectedUpdate[] = [];
  const c = await collectUpdates(nc, {
    jobId,
    round: 1,
    expected: ['a', 'b'],
    quorum: 2,
    deadlineMs: 10_000,
    onRejected: (r) => rejected.push(r),
    logger: quiet,
  });
  clientConn.publish(updateSubject(jobId, 1, 'a'), 'not json');
  // mallory publishes on a's subject with its own id in the body (what NATS permissions will also stop).
  clientConn.publish(updateSubject(jobId, 1, 'a'), JSON.stringify(update(jobId, 'mallory', 1)));
  send(jobId, 1, 'eve'); // valid message, but eve is not planned
  send(jobId, 2, 'a'); // next round's subject: not even delivered to this collector
  send(jobId, 1, 'a');
  send(jobId, 1, 'b');
  const r = await c.result;
  await c.close();
  assert.deepEqual(
    r.updates.map((u) => u.clientId),
    ['a', 'b'],
  );
  assert.equal(rejected.length, 3);
  assert.match(rejected[0]!.error.message, /not UTF-8 JSON/);
  assert.match(rejected[1]!.error.message, /clientId: is "mallory" but the subject says "a"/);
  assert.match(rejected[2]!.error.message, /eve is not planned for round 1/);
});

test('bad options are refused before subscribing', async () => {
  const base = { jobId: 'j', round: 0, expected: ['a', 'b'], quorum: 2, deadlineMs: 100 };
  await assert.rejects(collectUpdates(nc, { ...base, quorum: 3 }), /quorum 3 must be an integer in 1\.\.2/);
  await assert.rejects(collectUpdates(nc, { ...base, deadlineMs: 0 }), /deadlineMs 0 must be a positive/);
  await assert.rejects(collectUpdates(nc, { ...base, expected: ['a', 'a.b'] }), /invalid client id "a.b"/);
});

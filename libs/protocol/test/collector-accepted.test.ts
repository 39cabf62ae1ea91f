/** openCollection's onAccepted (aggregation as updates arrive): called once per update accepted in time, as it arrives. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openCollection } from '../src/collector.js';
import { ClientUpdateSchema, encodeMessage } from '../src/messages.js';
import { updateSubject } from '../src/subjects.js';
import { update } from './fixtures.js';

const quiet = { warn: () => undefined };

test('onAccepted sees each in-time update once, in arrival order; not duplicates, unplanned, malformed or late ones', async () => {
  const jobId = 'job-accepted';
  const accepted: string[] = [];
  const c = openCollection({
    jobId,
    round: 2,
    expected: ['a', 'b', 'c'],
    quorum: 2,
    deadlineMs: 60_000,
    logger: quiet,
    onAccepted: (u) => accepted.push(u.clientId),
  });
  const msg = (client: string): Uint8Array => encodeMessage(ClientUpdateSchema, update(jobId, client, 2), 'test');
  c.deliver(updateSubject(jobId, 2, 'b'), msg('b'));
  c.deliver(updateSubject(jobId, 2, 'b'), msg('b')); // duplicate
  c.deliver(updateSubject(jobId, 2, 'x'), msg('x')); // unplanned
  c.deliver(updateSubject(jobId, 2, 'a'), new TextEncoder().encode('{}')); // malformed
  c.deliver(updateSubject(jobId, 2, 'a'), msg('a'));
  assert.deepEqual(accepted, ['b', 'a'], 'reported before the round closes');
  await c.close(); // closes at quorum (2 of 3)
  const r = await c.result;
  assert.deepEqual(r.missing, ['c']);
  c.deliver(updateSubject(jobId, 2, 'c'), msg('c')); // late
  assert.deepEqual(accepted, ['b', 'a']);
});

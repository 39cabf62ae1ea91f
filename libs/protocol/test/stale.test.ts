/**
 * Stale work (issue 17 item 5): a replica skips tasks of rounds that have ended (acked, logged with round and
 * client, never trained), and an update for an ended round is reported with client and round instead of vanishing
 * with its closed collection. Private nats-server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/transport-node';
import { collectUpdates, watchStaleUpdates, type StaleUpdate } from '../src/collector.js';
import { ClientUpdateSchema, encodeMessage } from '../src/messages.js';
import { planSubject, updateSubject } from '../src/subjects.js';
import { WorkQueue, skipEndedRounds, watchPlannedRounds, type SkippedTask } from '../src/work-queue.js';
import { task, update as clientUpdate } from './fixtures.js';
import { usePrivateNats, waitFor } from './support/nats.js';

let nc: NatsConnection;

usePrivateNats((c) => (nc = c));

test('tasks of ended rounds are skipped (acked, reported with round and client); current ones are trained', async () => {
  const jobId = 'stale-tasks';
  const warnings: string[] = [];
  const q = await WorkQueue.open(nc, { jobId, storage: 'memory', logger: { warn: (m) => warnings.push(m) } });
  // The job state says rounds 0 and 1 are complete: a backlog of their tasks is stale.
  const lastCompleted = 1;
  for (const [c, r] of [
    ['a', 0],
    ['b', 1],
    ['c', 2],
    ['d', 2],
  ] as const)
    await q.enqueue(task(jobId, c, r));
  const trained: string[] = [];
  const skipped: SkippedTask[] = [];
  const run = await q.consume(
    async (t) => {
      trained.push(`${t.round}/${t.clientId}`);
    },
    {
      skipTask: (t) => (t.round <= lastCompleted ? `round ${t.round} already completed` : null),
      onSkipped: (s) => skipped.push(s),
    },
  );
  await waitFor('4 tasks handled', () => trained.length + skipped.length === 4);
  await run.stop();
  assert.deepEqual(trained.toSorted(), ['2/c', '2/d']);
  assert.deepEqual(
    skipped.map((s) => [s.task.round, s.task.clientId, s.reason]),
    [
      [0, 'a', 'round 0 already completed'],
      [1, 'b', 'round 1 already completed'],
    ],
  );
  assert.ok(warnings.some((w) => /skipped task #\d+ \(round 0, client a\): round 0 already completed/.test(w)));
  // Acked: nothing is left to redeliver.
  assert.deepEqual(await q.pending(), { pending: 0, ackPending: 0, redelivered: 0 });
});

test('an update for a round whose collection closed is reported with client and round', async () => {
  const jobId = 'stale-updates';
  let current = 0;
  const stale: StaleUpdate[] = [];
  const stop = await watchStaleUpdates(nc, { jobId, currentRound: () => current, onStale: (s) => stale.push(s) });
  const c0 = await collectUpdates(nc, { jobId, round: 0, expected: ['a', 'b'], quorum: 1, deadlineMs: 200 });
  const publish = (round: number, client: string): void =>
    nc.publish(
      updateSubject(jobId, round, client),
      encodeMessage(ClientUpdateSchema, clientUpdate(jobId, client, round), 'test'),
    );
  publish(0, 'a');
  const r0 = await c0.result;
  assert.deepEqual(r0.missing, ['b']);
  await c0.close();
  current = 1;
  // b's round-0 update arrives after the round ended and its collection closed; a's round-1 update is current.
  publish(0, 'b');
  publish(1, 'a');
  await nc.flush();
  await waitFor('the stale update', () => stale.length === 1);
  stop();
  assert.deepEqual(stale, [{ clientId: 'b', round: 0, currentRound: 1, subject: updateSubject(jobId, 0, 'b') }]);
});

test('watchPlannedRounds + skipEndedRounds: once round 3 is planned, a task of round 2 is stale', async () => {
  const jobId = 'stale-plans';
  const plans = await watchPlannedRounds(nc, jobId);
  const skip = skipEndedRounds(plans);
  assert.equal(plans.latest(), -1);
  assert.equal(skip(task(jobId, 'a', 0)), null, 'nothing planned yet: train');
  // Only the subject counts; the body is the aggregator's RoundPlan.
  nc.publish(planSubject(jobId, 2), new Uint8Array());
  nc.publish(planSubject(jobId, 3), new Uint8Array());
  nc.publish(planSubject(jobId, 1), new Uint8Array()); // out of order: the latest stays 3
  await nc.flush();
  await waitFor('plans seen', () => plans.latest() === 3);
  assert.equal(skip(task(jobId, 'a', 3)), null);
  assert.equal(skip(task(jobId, 'a', 2)), 'round 2 has ended (the aggregator planned round 3)');
  plans.stop();
});

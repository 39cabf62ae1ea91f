import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { WorkQueue, type FailedTask, type RejectedTask } from '../src/work-queue.js';
import type { TrainTask } from '../src/messages.js';
import { taskStreamName, taskSubject } from '../src/subjects.js';
import { deleteJobResources } from '../src/connection.js';
import { connectOrFail, uniqueJobId, waitFor } from './support/nats.js';
import { task } from './fixtures.js';

const jobs: string[] = [];
const conns: NatsConnection[] = [];
let nc: NatsConnection;
const quiet = { warn: () => undefined };

before(async () => {
  nc = await connectOrFail();
});
after(async () => {
  for (const j of jobs) await deleteJobResources(nc, j);
  for (const c of conns) if (!c.isClosed()) await c.close();
  await nc?.close();
});

async function freshQueue(prefix: string): Promise<WorkQueue> {
  const jobId = uniqueJobId(prefix);
  jobs.push(jobId);
  return WorkQueue.open(nc, { jobId, storage: 'memory', logger: quiet });
}

/** A trainer replica on its own connection, as separate processes would be. */
async function replica(jobId: string): Promise<{ q: WorkQueue; conn: NatsConnection }> {
  const conn = await connectOrFail();
  conns.push(conn);
  return { q: await WorkQueue.open(conn, { jobId, storage: 'memory', logger: quiet }), conn };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('two replicas share 6 tasks, each done exactly once; pending() drains from 6 to 0', async () => {
  const q = await freshQueue('share');
  const clients = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5'];
  for (const c of clients) await q.enqueue(task(q.jobId, c, 2));
  assert.deepEqual(await q.pending(), { pending: 6, ackPending: 0, redelivered: 0 });
  // Re-enqueueing the same job/round/client is deduplicated.
  assert.equal((await q.enqueue(task(q.jobId, 'c0', 2))).duplicate, true);

  const done = new Map<string, string>();
  const replicas = await Promise.all(['A', 'B'].map(async (name) => ({ name, ...(await replica(q.jobId)) })));
  const runs = await Promise.all(
    replicas.map(({ name, q: rq }) =>
      rq.consume(
        async (t: TrainTask) => {
          assert.equal(done.has(t.clientId), false, `task ${t.clientId} handled twice`);
          await sleep(60); // the "training"; long enough that one replica cannot drain the queue alone
          done.set(t.clientId, name);
        },
        { ackWaitMs: 5000, maxDeliver: 3 },
      ),
    ),
  );
  await waitFor('6 tasks done', () => done.size === 6);
  await Promise.all(runs.map((r) => r.stop()));
  assert.deepEqual([...done.keys()].toSorted(), clients);
  const perReplica = [...done.values()].reduce((m, n) => m.set(n, (m.get(n) ?? 0) + 1), new Map<string, number>());
  assert.ok(
    (perReplica.get('A') ?? 0) >= 1 && (perReplica.get('B') ?? 0) >= 1,
    `both replicas worked: ${[...perReplica]}`,
  );
  assert.deepEqual(await q.pending(), { pending: 0, ackPending: 0, redelivered: 0 });
  const s = await (await jetstreamManager(nc)).streams.info(taskStreamName(q.jobId));
  assert.equal(s.state.messages, 0, 'acked work-queue messages are removed');
});

test('a task whose replica never acks is redelivered to the other replica after ackWait', async () => {
  const q = await freshQueue('redeliver');
  const a = await replica(q.jobId);
  const b = await replica(q.jobId);
  let startedOnA = 0;
  let gotOnA: TrainTask | undefined;
  // Replica A takes the task and hangs (a killed process looks the same to the server).
  await a.q.consume(
    async (t) => {
      gotOnA = t;
      startedOnA = Date.now();
      await new Promise(() => undefined);
    },
    { ackWaitMs: 500, maxDeliver: 3 },
  );
  await q.enqueue(task(q.jobId, 'slowpoke', 0));
  await waitFor('A to take the task', () => gotOnA !== undefined);
  const onB: { task: TrainTask; deliveryCount: number; afterMs: number }[] = [];
  const runB = await b.q.consume(
    async (t, ctx) => {
      onB.push({ task: t, deliveryCount: ctx.deliveryCount, afterMs: Date.now() - startedOnA });
    },
    { ackWaitMs: 500, maxDeliver: 3 },
  );
  await waitFor('redelivery to B', () => onB.length === 1, 4000);
  await runB.stop();
  // "Kill" A: its handler never returns, so it never acks.
  await a.conn.close();
  assert.deepEqual(onB[0]!.task, gotOnA);
  assert.equal(onB[0]!.deliveryCount, 2);
  assert.ok(onB[0]!.afterMs >= 450, `redelivered ${onB[0]!.afterMs} ms after A took it, expected >= ackWait`);
  assert.deepEqual(await q.pending(), { pending: 0, ackPending: 0, redelivered: 0 });
});

test('inProgress() heartbeats keep a slow task from being redelivered', async () => {
  const q = await freshQueue('heartbeat');
  const deliveries: number[] = [];
  const slowWithHeartbeats = async (_t: TrainTask, ctx: { deliveryCount: number; inProgress(): void }) => {
    deliveries.push(ctx.deliveryCount);
    for (let i = 0; i < 6; i++) {
      await sleep(200); // 1.2 s of work in total, more than twice the ackWait
      ctx.inProgress();
    }
  };
  // Two replicas: whichever gets the task, the other would receive it again if a heartbeat were missed.
  const other = await replica(q.jobId);
  const runs = [
    await q.consume(slowWithHeartbeats, { ackWaitMs: 500, maxDeliver: 3 }),
    await other.q.consume(slowWithHeartbeats, { ackWaitMs: 500, maxDeliver: 3 }),
  ];
  await q.enqueue(task(q.jobId, 'patient', 0));
  await waitFor('the task to be acked', async () => (await q.pending()).ackPending === 0 && deliveries.length > 0);
  await Promise.all(runs.map((r) => r.stop()));
  assert.deepEqual(deliveries, [1]);
  assert.deepEqual(await q.pending(), { pending: 0, ackPending: 0, redelivered: 0 });
});

test('one consumption keeps pulling after a task that ran far longer than the pull request (no "heartbeats missed")', async () => {
  const jobId = uniqueJobId('long-task');
  jobs.push(jobId);
  const warnings: string[] = [];
  const q = await WorkQueue.open(nc, { jobId, storage: 'memory', logger: { warn: (m) => warnings.push(m) } });
  const handled: string[] = [];
  const run = await q.consume(
    async (t: TrainTask, ctx) => {
      if (t.clientId === 'slow')
        for (let i = 0; i < 8; i++) {
          await sleep(500); // 4 s: four times the 1 s pull request and its idle heartbeats
          ctx.inProgress();
        }
      handled.push(t.clientId);
    },
    { ackWaitMs: 2000, maxDeliver: 2, pullExpiresMs: 1000 },
  );
  let loopEnded = false;
  void run.done.then(() => (loopEnded = true));
  await q.enqueue(task(jobId, 'slow', 0));
  await waitFor('the slow task', () => handled.includes('slow'), 10_000);
  await q.enqueue(task(jobId, 'next', 0));
  await waitFor('the task after it, on the same consumption', () => handled.includes('next'), 5000);
  assert.equal(loopEnded, false, 'the pull loop is still running');
  await run.stop();
  assert.deepEqual(handled, ['slow', 'next']);
  assert.deepEqual(warnings, []);
});

test("per-client consumers: a data owner's replica pulls only its own client's tasks; pooled and per-client do not mix", async () => {
  const q = await freshQueue('per-client');
  for (const c of ['alice', 'bob', 'alice2']) await q.enqueue(task(q.jobId, c, 0));
  const seen: Record<string, string[]> = { alice: [], bob: [] };
  const owners = await Promise.all(
    ['alice', 'bob'].map(async (clientId) => {
      const conn = await connectOrFail();
      conns.push(conn);
      const oq = await WorkQueue.open(conn, { jobId: q.jobId, clientId, logger: quiet });
      assert.equal(oq.consumerName, `client-${clientId}`);
      return oq.consume(async (t) => void seen[clientId]!.push(t.clientId), { ackWaitMs: 5000 });
    }),
  );
  await waitFor('both owners drained their tasks', () => seen['alice']!.length + seen['bob']!.length === 2);
  await sleep(300); // alice2's task must stay queued: no consumer filters on it
  await Promise.all(owners.map((o) => o.stop()));
  assert.deepEqual(seen, { alice: ['alice'], bob: ['bob'] });

  // A pooled consumer cannot join a queue that per-client consumers already pull from.
  const pooled = await WorkQueue.open(nc, { jobId: q.jobId, logger: quiet });
  await assert.rejects(
    pooled.consume(async () => {}),
    /cannot create consumer client-trainer: .*pooled trainers .* or by per-client trainers/,
  );
  // A per-client queue is never created by its client: missing stream -> a clear error.
  await assert.rejects(
    WorkQueue.open(nc, { jobId: uniqueJobId('never-started'), clientId: 'alice', logger: quiet }),
    /does not exist yet: the aggregator creates it when the job starts \(client alice\)/,
  );
});

test('a malformed task is terminated with a reason, never redelivered; a throwing handler is retried then terminated', async () => {
  const q = await freshQueue('malformed');
  const js = jetstream(nc);
  await js.publish(taskSubject(q.jobId, 'bad'), new TextEncoder().encode('{"protocolVersion":1,"round":"x"}'));
  await q.enqueue(task(q.jobId, 'flaky', 1));
  const warnings: string[] = [];
  const rejected: RejectedTask[] = [];
  const failed: FailedTask[] = [];
  const handled: number[] = [];
  const q2 = await WorkQueue.open(nc, { jobId: q.jobId, logger: { warn: (m) => warnings.push(m) } });
  const run = await q2.consume(
    async (_t, ctx) => {
      handled.push(ctx.deliveryCount);
      throw new Error('GPU fell off');
    },
    { ackWaitMs: 500, maxDeliver: 2, onRejected: (r) => rejected.push(r), onFailed: (f) => failed.push(f) },
  );
  await waitFor('the flaky task to be given up', () => failed.some((f) => f.final), 5000);
  await sleep(700); // longer than ackWait: a terminated task would be back by now if it were redelivered
  await run.stop();

  assert.equal(rejected.length, 1, 'the malformed task was seen exactly once');
  assert.equal(rejected[0]!.subject, taskSubject(q.jobId, 'bad'));
  assert.match(rejected[0]!.error.message, /round: Invalid input: expected number, received string/);
  assert.ok(
    warnings.some((w) => /terminated malformed task: invalid message on fl\..*\.task\.bad \(task #1\)/.test(w)),
    warnings.join('\n'),
  );
  assert.deepEqual(handled, [1, 2]);
  assert.deepEqual(
    failed.map((f) => [f.deliveryCount, f.final, (f.error as Error).message]),
    [
      [1, false, 'GPU fell off'],
      [2, true, 'GPU fell off'],
    ],
  );
  assert.ok(warnings.some((w) => /failed on delivery 2\/2, terminated: GPU fell off/.test(w)));
  assert.deepEqual(await q.pending(), { pending: 0, ackPending: 0, redelivered: 0 });
  const s = await (await jetstreamManager(nc)).streams.info(taskStreamName(q.jobId));
  assert.equal(s.state.messages, 0, 'terminated tasks leave the work-queue stream');
  await assert.rejects(q.enqueue(task('other-job', 'x')), /jobId: is other-job but this queue serves job/);
});

test('evaluate tasks are not deduplicated (they change no state); training tasks of the same round are', async () => {
  const q = await freshQueue('evaldedup');
  const train = task(q.jobId, 'c0', 3);
  const evaluate: TrainTask = { ...train, kind: 'evaluate' };
  assert.equal((await q.enqueue(train)).duplicate, false);
  assert.equal((await q.enqueue(train)).duplicate, true, 'the same training task again is a duplicate');
  // Not a duplicate of the training task of the same round and client, nor of itself: a restarted aggregator
  // asks again and the trainer recomputes the same metrics.
  assert.equal((await q.enqueue(evaluate)).duplicate, false);
  assert.equal((await q.enqueue(evaluate)).duplicate, false);
  assert.equal((await q.pending()).pending, 3);
});

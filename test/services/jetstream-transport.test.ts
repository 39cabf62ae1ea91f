/**
 * The JetStream work-queue transport strategy as a NestJS microservice, built with @nestjs/testing against a real,
 * private nats-server: tasks reach the @MessagePattern handler of their kind, are acked only after the handler's
 * result, a failing handler's task is redelivered, and consumption survives a broker outage (the server killed and
 * restarted on the same JetStream store).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import 'reflect-metadata';
import { Controller } from '@nestjs/common';
import { Ctx, MessagePattern, Payload } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import type { INestApplication } from '@nestjs/common';
import type { NatsConnection } from '@nats-io/transport-node';
import { WorkQueue, connectTransport, type TrainTask } from '../../libs/protocol/src/index.js';
import { task } from '../../libs/protocol/test/fixtures.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import {
  JetStreamWorkQueueServer,
  TASK_EVALUATE,
  TASK_TRAIN,
  WorkQueueContext,
} from '../../services/common/jetstream-transport.js';
import { JsonLogger, type LogRecord } from '../../services/common/logger.js';

/** What the handlers saw, in order: `kind:round/client#delivery`. */
const seen: string[] = [];
/** Tasks whose first delivery fails (the handler throws), as `round/client`. */
const failOnce = new Set<string>();

@Controller()
class TasksController {
  @MessagePattern(TASK_TRAIN)
  async train(@Payload() t: TrainTask, @Ctx() ctx: WorkQueueContext): Promise<void> {
    seen.push(`train:${t.round}/${t.clientId}#${ctx.task.deliveryCount}`);
    if (failOnce.delete(`${t.round}/${t.clientId}`)) throw new Error('first delivery fails');
  }

  @MessagePattern(TASK_EVALUATE)
  async evaluate(@Payload() t: TrainTask): Promise<void> {
    seen.push(`evaluate:${t.round}/${t.clientId}`);
  }
}

let nats: PrivateNats;
let nc: NatsConnection;
let app: INestApplication;
let queue: WorkQueue;
const logs: LogRecord[] = [];
const JOB = `jsq-${process.pid}`;

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); await new Promise((r) => setTimeout(r, 50)))
    assert.ok(Date.now() < end, `${what} (seen: ${JSON.stringify(seen)})`);
}

before(async () => {
  nats = await startPrivateNats(() => '');
  nc = await connectTransport(nats.url, { env: {}, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  queue = await WorkQueue.open(nc, { jobId: JOB, logger: { warn: () => {} } });
  const moduleRef = await Test.createTestingModule({ controllers: [TasksController] }).compile();
  app = moduleRef.createNestApplication({ logger: false });
  app.connectMicroservice({
    strategy: new JetStreamWorkQueueServer(
      { queue: async () => queue, closed: () => nc.isClosed(), consume: { ackWaitMs: 1000, pullExpiresMs: 1000 } },
      new JsonLogger('transport-test', (r) => void logs.push(r)),
    ),
  });
  await app.init();
  await app.startAllMicroservices();
});

after(async () => {
  await app?.close();
  await nc?.close();
  await nats?.stop();
});

test('tasks reach the handler of their kind and are acked once it resolved; a failing task is redelivered', async () => {
  failOnce.add('0/bob');
  await queue.enqueue(task(JOB, 'alice', 0));
  await queue.enqueue(task(JOB, 'bob', 0));
  await queue.enqueue({ ...task(JOB, 'alice', 1), kind: 'evaluate' });
  await until('three tasks handled, bob twice', () => seen.length === 4);
  assert.deepEqual(seen.toSorted(), ['evaluate:1/alice', 'train:0/alice#1', 'train:0/bob#1', 'train:0/bob#2']);
  // Acked (not merely delivered): nothing pending or awaiting an ack on the consumer.
  let depth = await queue.pending();
  for (const end = Date.now() + 5000; depth.pending + depth.ackPending > 0 && Date.now() < end;)
    depth = await queue.pending();
  assert.equal(depth.pending, 0);
  assert.equal(depth.ackPending, 0);
});

test('a broker outage: the server is killed for 3 s and restarted on the same store; pulling resumes', async () => {
  seen.length = 0;
  await nats.outage(3000);
  // JetStream takes a moment to recover its store after the restart: enqueue until it accepts.
  for (const end = Date.now() + 20_000; ; await new Promise((r) => setTimeout(r, 250))) {
    try {
      await queue.enqueue(task(JOB, 'carol', 2));
      break;
    } catch (e) {
      if (Date.now() > end) throw e;
    }
  }
  await until('the task after the outage was handled', () => seen.includes('train:2/carol#1'), 30_000);
  // Whether the pull loop had to be restarted depends on when the outage hit it (a pull that merely expires
  // keeps the loop alive); either way pulling resumed.
  console.log(`outage: transport log ${JSON.stringify(logs.map((r) => r.msg))}`);
});

/**
 * The client-trainer's Nest module against a real, private nats-server: @nestjs/testing resolves
 * ClientTrainerModule, whose NATS connection, logger and job stores are custom providers; TrainerController and
 * the ClientTrainer service receive the module's connection (the one provider, not a connection of their own), the
 * stores open their buckets on it, and closing the module drains it. Then the same module served by the HTTP shell
 * (startTrainer): live at once, not ready before the job exists, and the connection closed with the service. And
 * ServerAlignmentModule and EvaluatorModule: the same providers, each service class on its module's connection.
 * AggregatorModule: its injected collaborators, and its @EventPattern handlers (AggregatorController on the core
 * NATS event transport) receiving real ClientUpdates and ClientMetrics published on NATS: a bad update rejected with
 * a reason naming the field, an unplanned client's rejected, good ones counted into the round, a duplicate ignored,
 * an update of an ended round counted as stale, metrics routed to their round's listener only.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import { jetstreamManager } from '@nats-io/jetstream';
import { resolveJobSpec } from '../../libs/fedbiot/src/index.js';
import { stateBucketName } from '../../libs/protocol/src/index.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { ClientTrainer } from '../../services/client-trainer/trainer.js';
import { TrainerController } from '../../services/client-trainer/trainer.controller.js';
import { ClientTrainerModule, startTrainer } from '../../services/client-trainer/trainer.module.js';
import type { ServiceConnection } from '../../services/common/connection.js';
import { ROLE } from '../../services/common/http.js';
import { JOB_CONTEXT, JOB_STORES, NATS_CONNECTION, type JobStores } from '../../services/common/providers.js';
import { LazyJobContext } from '../../services/common/job-context.js';
import type { TrainerOptions } from '../../services/client-trainer/trainer.js';
import { ServerAlignment } from '../../services/server-alignment/alignment.js';
import { ServerAlignmentModule } from '../../services/server-alignment/alignment.module.js';
import { Evaluator, evaluatorData } from '../../services/evaluator/evaluator.js';
import { EvaluatorModule } from '../../services/evaluator/evaluator.module.js';
import type { LogRecord } from '../../services/common/logger.js';
import { connect } from '@nats-io/transport-node';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ClientMetricsSchema,
  ClientUpdateSchema,
  clientMetricsSubject,
  encodeMessage,
  updateSubject,
  type RejectedUpdate,
} from '../../libs/protocol/src/index.js';
import { update } from '../../libs/protocol/test/fixtures.js';
import { Aggregator } from '../../services/aggregator/aggregator.js';
import { AggregatorModule } from '../../services/aggregator/aggregator.module.js';
import { AggregatorInbox } from '../../services/aggregator/aggregator-inbox.js';
import { RunFolderWriter } from '../../services/aggregator/run-folder.js';
import { NatsEventServer } from '../../services/common/nats-event-transport.js';
import { NATS_CLIENT, NATS_EVENTS, SERVICE_LOG } from '../../services/common/providers.js';

let nats: PrivateNats;
const logs: LogRecord[] = [];

/** A data owner's replica: it waits for the aggregator's streams, so nothing trains without a job. */
function options(jobId: string): TrainerOptions {
  return {
    natsUrl: nats.url,
    // No credentials from this process's environment: the private server has no auth.
    natsEnv: {},
    spec: resolveJobSpec({ job: { id: jobId, seed: 1 } }, 'trainer module test'),
    clientId: 'add',
    replica: `trainer-${jobId}`,
    logSink: (r) => void logs.push(r),
  };
}

before(async () => {
  nats = await startPrivateNats(() => '');
});

after(async () => {
  await nats?.stop();
});

test('ClientTrainerModule injects one NATS connection into the controller, the service and the stores', async () => {
  const jobId = `tm-${process.pid}`;
  const moduleRef = await Test.createTestingModule({ imports: [ClientTrainerModule.register(options(jobId))] })
    .setLogger({ log() {}, error() {}, warn() {} })
    .compile();
  const conn = moduleRef.get<ServiceConnection>(NATS_CONNECTION);
  assert.ok(conn.connected(), 'the provider connected while the module was resolved');
  assert.match(conn.nc.getServer(), new RegExp(`:${new URL(nats.url).port}$`));

  const controller = moduleRef.get(TrainerController);
  assert.equal(controller.conn, conn, 'the controller holds the module connection');
  const role = moduleRef.get<ClientTrainer>(ROLE);
  assert.ok(role instanceof ClientTrainer);
  assert.equal(role.ready(), false, 'not ready before start() and the package');

  const stores = moduleRef.get<JobStores>(JOB_STORES);
  assert.equal(stores.nc, conn.nc, 'the stores use the module connection');
  assert.equal(stores.jobId, jobId);
  // Opened on first use, on that connection: the bucket's stream now exists on the server.
  const state = await stores.state();
  assert.equal(await stores.state(), state, 'kept once opened');
  const jsm = await jetstreamManager(conn.nc);
  assert.equal((await jsm.streams.info(`KV_${stateBucketName(jobId)}`)).config.name, `KV_${stateBucketName(jobId)}`);

  await moduleRef.close();
  assert.ok(conn.nc.isClosed(), 'closing the module drains the connection it opened');
});

test('startTrainer serves the module: live at once, not ready without a job, connection closed on close', async () => {
  const svc = await startTrainer(options(`tm2-${process.pid}`), 0);
  let conn: ServiceConnection | undefined;
  try {
    conn = svc.app.get<ServiceConnection>(NATS_CONNECTION);
    assert.equal(svc.app.get(TrainerController).conn, conn);
    assert.equal((await fetch(`${svc.url}/health/live`)).status, 200);
    // A data owner's replica waits for the aggregator to create the job's streams; until then it is not ready.
    const waiting = (): boolean => logs.some((r) => r.msg === 'waiting for the aggregator to start the job');
    for (const end = Date.now() + 10_000; !waiting(); await new Promise((r) => setTimeout(r, 50)))
      assert.ok(Date.now() < end, 'the replica waits for the job');
    assert.equal((await fetch(`${svc.url}/health/ready`)).status, 503);
  } finally {
    await svc.close();
  }
  assert.ok(conn?.nc.isClosed(), 'the service closed the module connection');
});

/** The job context provider: made with the spec and the role's data parts, nothing loaded until start() opens it. */
function assertJobContext(ctx: unknown, spec: TrainerOptions['spec'], parts: readonly string[]): void {
  assert.ok(ctx instanceof LazyJobContext, 'JOB_CONTEXT is a LazyJobContext');
  assert.equal(ctx.spec, spec);
  assert.deepEqual(ctx.opts, { parts });
}

test('the evaluator holds the test sets in simulation, no client data in private evaluation', () => {
  const spec = options('tm-parts').spec;
  assert.deepEqual(evaluatorData({ ...spec, eval: { ...spec.eval, mode: 'simulation' } }), { parts: ['test'] });
  assert.deepEqual(evaluatorData({ ...spec, eval: { ...spec.eval, mode: 'private' } }), { parts: [] });
});

// The default eval.mode is private: the evaluator's context holds no client data.
for (const [name, register, type, parts] of [
  ['ServerAlignmentModule', ServerAlignmentModule.register, ServerAlignment, ['public']],
  ['EvaluatorModule', EvaluatorModule.register, Evaluator, []],
] as const)
  test(`${name}: the service class and the stores on the module connection, drained on close`, async () => {
    const jobId = `tm-${name}-${process.pid}`;
    const { natsUrl, natsEnv, spec, logSink } = options(jobId);
    const moduleRef = await Test.createTestingModule({
      imports: [register({ natsUrl, natsEnv, spec, logSink })],
    })
      .setLogger({ log() {}, error() {}, warn() {} })
      .compile();
    const conn = moduleRef.get<ServiceConnection>(NATS_CONNECTION);
    assert.ok(conn.connected());
    const role = moduleRef.get<ServerAlignment | Evaluator>(ROLE);
    assert.ok(role instanceof type);
    assert.equal(role.ready(), false, 'not ready before start() loaded the model');
    assert.equal(moduleRef.get<JobStores>(JOB_STORES).nc, conn.nc);
    assertJobContext(moduleRef.get(JOB_CONTEXT), spec, parts);
    await moduleRef.close();
    assert.ok(conn.nc.isClosed());
  });

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); await new Promise((r) => setTimeout(r, 20)))
    assert.ok(Date.now() < end, what);
}

test('AggregatorModule: injected collaborators; its event handlers take real updates and metrics off NATS', async () => {
  const jobId = `tm-agg-${process.pid}`;
  const runsDir = await mkdtemp(join(tmpdir(), 'agg-module-'));
  const { natsUrl, natsEnv, spec } = options(jobId);
  const aggLogs: LogRecord[] = [];
  const moduleRef = await Test.createTestingModule({
    imports: [AggregatorModule.register({ natsUrl, natsEnv, spec, runsDir, logSink: (r) => void aggLogs.push(r) })],
  })
    .setLogger({ log() {}, error() {}, warn() {} })
    .compile();
  const conn = moduleRef.get<ServiceConnection>(NATS_CONNECTION);
  const publisher = await connect({ servers: nats.url });
  try {
    assert.ok(conn.connected(), 'the provider connected while the module was resolved');
    const role = moduleRef.get<Aggregator>(ROLE);
    assert.ok(role instanceof Aggregator);
    assert.equal(role.ready(), false, 'not ready before start() loaded the model and the job');
    assert.equal(role.log, moduleRef.get(SERVICE_LOG), 'the role logs through the injected logger');
    assert.equal(moduleRef.get<JobStores>(JOB_STORES).nc, conn.nc, 'the stores use the module connection');
    assertJobContext(moduleRef.get(JOB_CONTEXT), spec, []);
    const events = moduleRef.get<NatsEventServer>(NATS_EVENTS);
    assert.ok(events instanceof NatsEventServer);
    assert.deepEqual(role.transports, [events], "the handlers' transport is the role's");
    assert.equal(events.unwrap(), conn.nc, 'the event transport subscribes on the module connection');
    assert.ok(moduleRef.get(NATS_CLIENT), "Nest's NATS client for the alignment and evaluation calls");
    assert.equal(moduleRef.get(RunFolderWriter).runsDir, runsDir, 'the run folder writer writes under runsDir');
    const inbox = moduleRef.get(AggregatorInbox);

    // The app with the role's transport, as the shared shell connects it.
    const app = moduleRef.createNestApplication({ logger: false });
    app.connectMicroservice({ strategy: events });
    await app.init();
    await app.startAllMicroservices();
    await events.listening;

    // Round 0 plans add and sub; everything below is published by another connection, as trainers do.
    const rejected: RejectedUpdate[] = [];
    const duplicates: string[] = [];
    const collection = await inbox.collect({
      jobId,
      round: 0,
      expected: ['add', 'sub'],
      quorum: 2,
      deadlineMs: 20_000,
      onRejected: (r) => void rejected.push(r),
      onDuplicate: (d) => void duplicates.push(d.clientId),
      logger: { warn: () => {} },
    });
    assert.deepEqual(inbox.openRounds(), [0]);
    const send = (subject: string, body: Uint8Array | string): void => publisher.publish(subject, body);
    // Published at once: the collection resolved only once the handlers' subscriptions were live.
    const bad = { ...update(jobId, 'add'), tokens: -5 };
    send(updateSubject(jobId, 0, 'add'), JSON.stringify(bad));
    send(updateSubject(jobId, 0, 'mul'), encodeMessage(ClientUpdateSchema, update(jobId, 'mul'), 'test'));
    send(updateSubject(jobId, 0, 'sub'), encodeMessage(ClientUpdateSchema, update(jobId, 'sub', 0, 7), 'test'));
    // Impersonation: add's subject, sub's body.
    send(updateSubject(jobId, 0, 'add'), encodeMessage(ClientUpdateSchema, update(jobId, 'sub'), 'test'));
    await until('three rejections', () => rejected.length === 3);
    assert.match(rejected[0]!.error.message, /tokens/, 'the bad update is rejected naming the field');
    assert.equal(rejected[0]!.subject, updateSubject(jobId, 0, 'add'));
    assert.match(rejected[1]!.error.message, /clientId: mul is not planned for round 0/);
    assert.match(rejected[2]!.error.message, /clientId/, "another client's update on add's subject");
    // A second update from sub is a duplicate; add's good one completes the round.
    send(updateSubject(jobId, 0, 'sub'), encodeMessage(ClientUpdateSchema, update(jobId, 'sub', 0, 9), 'test'));
    send(updateSubject(jobId, 0, 'add'), encodeMessage(ClientUpdateSchema, update(jobId, 'add', 0, 11), 'test'));
    const result = await collection.result;
    assert.equal(result.closedBy, 'all');
    assert.deepEqual(
      result.updates.map((u) => [u.clientId, u.examples]),
      [
        ['sub', 7],
        ['add', 11],
      ],
      'the good updates counted, in arrival order, the first of sub kept',
    );
    assert.deepEqual(duplicates, ['sub']);
    await collection.close();
    assert.deepEqual(inbox.openRounds(), [], 'a closed collection gets no more messages');

    // Round 0 collected: the aggregator moves the inbox on, and a late update of round 0 is stale.
    inbox.collecting = 1;
    send(updateSubject(jobId, 0, 'add'), encodeMessage(ClientUpdateSchema, update(jobId, 'add'), 'test'));
    await until('the stale update logged', () => aggLogs.some((r) => r.msg === 'update for an ended round'));
    const stale = aggLogs.find((r) => r.msg === 'update for an ended round')!;
    assert.equal(stale['clientId'], 'add');
    assert.equal(stale['round'], 0);
    assert.equal(stale['currentRound'], 1);
    const counted = (await role.metrics.rejectedUpdates.get()).values.find((v) => v.labels['reason'] === 'stale');
    assert.equal(counted?.value, 1, 'fl_rejected_updates_total{reason="stale"}');

    // Private evaluation: a round's ClientMetrics reach that round's listener only, until it stops.
    const heard: string[] = [];
    const stop = await inbox.metrics(1, (subject, data) => {
      const d = JSON.parse(new TextDecoder().decode(data)) as { clientId: string; round: number };
      heard.push(`${subject}|${d.round}/${d.clientId}`);
    });
    const metrics = (round: number, clientId: string): Uint8Array =>
      encodeMessage(
        ClientMetricsSchema,
        {
          protocolVersion: 1,
          jobId,
          round,
          clientId,
          mode: 'adapEmu',
          loss: 1.5,
          accuracy: 0.25,
          tokens: 100,
          items: 8,
          durationMs: 3,
        },
        'test',
      );
    send(clientMetricsSubject(jobId, 0, 'add'), metrics(0, 'add'));
    send(clientMetricsSubject(jobId, 1, 'sub'), metrics(1, 'sub'));
    await until('the round-1 metrics heard', () => heard.length > 0);
    stop();
    send(clientMetricsSubject(jobId, 1, 'add'), metrics(1, 'add'));
    await publisher.flush();
    await conn.nc.flush();
    assert.deepEqual(heard, [`${clientMetricsSubject(jobId, 1, 'sub')}|1/sub`], 'round 1 only, nothing after stop');

    await app.close();
    assert.ok(conn.nc.isClosed(), 'closing the app drains the module connection');
  } finally {
    await publisher.close();
    await moduleRef.close().catch(() => {});
    await rm(runsDir, { recursive: true, force: true });
  }
});

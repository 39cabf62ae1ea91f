/**
 * The client-trainer's Nest module against a real, private nats-server: @nestjs/testing resolves
 * ClientTrainerModule, whose NATS connection, logger and job stores are custom providers; TrainerController and
 * the ClientTrainer service receive the module's connection (the one provider, not a connection of their own), the
 * stores open their buckets on it, and closing the module drains it. Then the same module served by the HTTP shell
 * (startTrainer): live at once, not ready before the job exists, and the connection closed with the service. And
 * ServerAlignmentModule and EvaluatorModule: the same providers, each service class on its module's connection.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import { jetstreamManager } from '@nats-io/jetstream';
import { resolveJobSpec } from '../../libs/fedbiot/src/job-spec.js';
import { stateBucketName } from '../../libs/protocol/src/index.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { ClientTrainer } from '../../services/client-trainer/trainer.js';
import { TrainerController } from '../../services/client-trainer/trainer.controller.js';
import { ClientTrainerModule, startTrainer } from '../../services/client-trainer/trainer.module.js';
import type { ServiceConnection } from '../../services/common/connection.js';
import { ROLE } from '../../services/common/http.js';
import { JOB_STORES, NATS_CONNECTION, type JobStores } from '../../services/common/providers.js';
import type { TrainerOptions } from '../../services/client-trainer/trainer.js';
import { ServerAlignment } from '../../services/server-alignment/alignment.js';
import { ServerAlignmentModule } from '../../services/server-alignment/alignment.module.js';
import { Evaluator } from '../../services/evaluator/evaluator.js';
import { EvaluatorModule } from '../../services/evaluator/evaluator.module.js';
import type { LogRecord } from '../../services/common/logger.js';

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

for (const [name, register, type] of [
  ['ServerAlignmentModule', ServerAlignmentModule.register, ServerAlignment],
  ['EvaluatorModule', EvaluatorModule.register, Evaluator],
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
    await moduleRef.close();
    assert.ok(conn.nc.isClosed());
  });

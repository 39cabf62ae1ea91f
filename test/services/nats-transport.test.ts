/**
 * The alignment call's wiring on Nest's built-in NATS transport, built with @nestjs/testing against a private
 * nats-server: AlignmentController (made per job) on ServerNats in the `server-alignment` queue group, asked through
 * ClientNats with sendWithRetry. The role behind the controller is a plain object with the one method the
 * controller calls (the alignment itself is covered by distributed-job.test.ts).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import 'reflect-metadata';
import { ClientNats, ServerNats } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import type { INestApplication } from '@nestjs/common';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { ROLE } from '../../services/common/http.js';
import { natsTransportOptions, sendWithRetry } from '../../services/common/nats-transport.js';
import { alignSubject } from '../../libs/protocol/src/index.js';
import { alignmentController } from '../../services/server-alignment/alignment.controller.js';

const JOB = `nt-${process.pid}`;
let nats: PrivateNats;
let client: ClientNats;
const apps: INestApplication[] = [];

/** A server-alignment app whose role answers with its name and the request it got. */
async function startServer(name: string, calls: unknown[]): Promise<INestApplication> {
  const role = { answer: async (req: unknown) => (calls.push(req), { server: name, got: req }) };
  const moduleRef = await Test.createTestingModule({
    controllers: [alignmentController(JOB)],
    providers: [{ provide: ROLE, useValue: role }],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  app.connectMicroservice({ strategy: new ServerNats(natsTransportOptions(nats.url, {})) });
  await app.init();
  await app.startAllMicroservices();
  apps.push(app);
  return app;
}

before(async () => {
  nats = await startPrivateNats(() => '');
  client = new ClientNats(natsTransportOptions(nats.url, {}));
});
after(async () => {
  await client?.close();
  for (const a of apps) await a.close();
  await nats?.stop();
});

test('with no server listening the call fails at its deadline, naming the subject', async () => {
  await assert.rejects(sendWithRetry(client, alignSubject(JOB), { call: 0 }, 1200), (e: Error) => {
    assert.match(e.message, new RegExp(`request on fl\\.${JOB}\\.align failed: Empty response`));
    return true;
  });
});

test('a call made before server-alignment listens is retried and answered once it does', async () => {
  const calls: unknown[] = [];
  const pending = sendWithRetry(client, alignSubject(JOB), { call: 1, steps: 2 }, 20_000);
  await new Promise((r) => setTimeout(r, 800));
  await startServer('a', calls);
  assert.deepEqual(await pending, { server: 'a', got: { call: 1, steps: 2 } });
  assert.deepEqual(calls, [{ call: 1, steps: 2 }]);
});

test('two server-alignment replicas share the queue group: each call is answered by exactly one', async () => {
  const callsB: unknown[] = [];
  await startServer('b', callsB);
  const replies = (await Promise.all(
    Array.from({ length: 10 }, (_, i) => sendWithRetry(client, alignSubject(JOB), { call: 10 + i }, 10_000)),
  )) as { server: string; got: { call: number } }[];
  assert.deepEqual(
    replies.map((r) => r.got.call),
    Array.from({ length: 10 }, (_, i) => 10 + i),
  );
  assert.equal(replies.filter((r) => r.server === 'b').length, callsB.length, 'b answered what it received');
});

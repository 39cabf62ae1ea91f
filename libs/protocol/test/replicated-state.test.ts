import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { jetStreamReplicas, REPLICAS_ENV } from '../src/replicas.js';
import { JOB_STATE_KEY, StateStore } from '../src/state-store.js';
import { BlobStore } from '../src/blob-store.js';
import { WorkQueue } from '../src/work-queue.js';
import { JobStateSchema } from '../src/messages.js';
import { blobBucketName, stateBucketName, taskStreamName } from '../src/subjects.js';
import { task } from './fixtures.js';
import { eventually, uniqueJobId } from './support/nats.js';
import { hasNatsServerBinary, startNatsCluster } from './support/nats-cluster.js';

test('jetStreamReplicas: explicit, then FEDBIOT_JS_REPLICAS, then 1; anything outside 1..5 names the setting', () => {
  assert.equal(jetStreamReplicas(undefined, {}), 1);
  assert.equal(jetStreamReplicas(undefined, { [REPLICAS_ENV]: '3' }), 3);
  assert.equal(jetStreamReplicas(2, { [REPLICAS_ENV]: '3' }), 2);
  assert.throws(() => jetStreamReplicas(undefined, { [REPLICAS_ENV]: 'three' }), /FEDBIOT_JS_REPLICAS=three: expected/);
  assert.throws(() => jetStreamReplicas(undefined, { [REPLICAS_ENV]: '7' }), /FEDBIOT_JS_REPLICAS=7/);
  assert.throws(() => jetStreamReplicas(0), /replicas=0: expected an integer from 1 to 5/);
  assert.throws(() => jetStreamReplicas(1.5), /replicas=1\.5/);
});

const state = (jobId: string, round: number) =>
  JobStateSchema.parse({
    protocolVersion: 1,
    jobId,
    status: 'running',
    totalRounds: 5,
    lastCompletedRound: round,
    model: null,
    adapterLora: null,
    emulatorLora: null,
    message: null,
    updatedAt: Date.now(),
  });

test(
  'R3 state on a 3-node JetStream cluster: the work queue, KV state and blobs survive the loss of the leader node',
  { skip: !hasNatsServerBinary && 'no nats-server binary', timeout: 420_000 },
  async () => {
    const cluster = await startNatsCluster(3);
    let nc: NatsConnection | undefined;
    try {
      nc = await connect({ servers: cluster.servers, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
      // jetstreamManager asks for the account info, which times out until the cluster has a meta leader.
      const jsm = await eventually('JetStream meta leader', () => jetstreamManager(nc!));
      const jobId = uniqueJobId('r3');
      const env = { ...process.env };
      process.env[REPLICAS_ENV] = '3';
      let queue: WorkQueue, kv: StateStore, blobs: BlobStore;
      try {
        queue = await eventually('work queue', () => WorkQueue.open(nc!, { jobId }));
        kv = await eventually('state store', () => StateStore.open(nc!, { bucket: stateBucketName(jobId) }));
        blobs = await eventually('blob store', () => BlobStore.open(nc!, { bucket: blobBucketName(jobId) }));
      } finally {
        process.env = env;
      }
      for (const stream of [taskStreamName(jobId), `KV_${stateBucketName(jobId)}`, `OBJ_${blobBucketName(jobId)}`]) {
        const info = await jsm.streams.info(stream);
        assert.equal(info.config.num_replicas, 3, `${stream} num_replicas`);
      }
      await queue.enqueue(task(jobId, 'alice', 0));
      await kv.put(JOB_STATE_KEY, JobStateSchema, state(jobId, 1));
      const bytes = new Uint8Array(300_000).map((_, i) => (i * 31) % 251);
      const ref = await blobs.put(bytes);

      // Kill the node that leads the job state's stream: the surviving two hold a majority and elect a new leader.
      const leader = (await jsm.streams.info(`KV_${stateBucketName(jobId)}`)).cluster?.leader;
      assert.ok(leader, 'the KV stream reports a leader');
      await cluster.kill(leader);
      const newLeader = await eventually('a new leader', async () => {
        const l = (await jsm.streams.info(`KV_${stateBucketName(jobId)}`)).cluster?.leader;
        if (l === undefined || l === leader) throw new Error(`leader still ${String(l)}`);
        return l;
      });
      assert.notEqual(newLeader, leader);
      const read = await eventually('KV read', () => kv.get(JOB_STATE_KEY, JobStateSchema));
      assert.equal(read?.value.lastCompletedRound, 1, 'the job state written before the loss is there');
      await eventually('KV write', () => kv.put(JOB_STATE_KEY, JobStateSchema, state(jobId, 2)));
      assert.deepEqual(await eventually('blob read', () => blobs.get(ref)), bytes);
      const depth = await eventually('queue depth', () => queue.pending());
      assert.equal(depth.pending + depth.ackPending, 1, 'the task enqueued before the loss is still queued');

      // The killed node comes back on its store and catches up.
      await cluster.restart(leader);
      await eventually('replica caught up', async () => {
        const info = await jsm.streams.info(`KV_${stateBucketName(jobId)}`);
        const back = info.cluster?.replicas?.find((r) => r.name === leader);
        if (back === undefined || !back.current) throw new Error(`${leader} not current yet`);
      });
      // KV reads are direct gets, which any replica may answer (not linearizable): the restarted node serves the
      // state written while it was down once it has caught up.
      await eventually('the newest state from every replica', async () => {
        const v = (await kv.get(JOB_STATE_KEY, JobStateSchema))?.value.lastCompletedRound;
        if (v !== 2) throw new Error(`read lastCompletedRound ${String(v)}`);
      });
    } finally {
      await nc?.close();
      await cluster.stop();
    }
  },
);

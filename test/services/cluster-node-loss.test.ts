/**
 * A NATS node lost mid-round: a 3-node JetStream cluster (Testcontainers containers of the local NATS image on a
 * user-defined Docker network with routes between them, or nats-server child processes where Docker or the image is
 * missing: libs/protocol/test/support/nats-cluster-containers.ts; FEDBIOT_TEST_NATS=container|process forces one),
 * the job's state replicated R3 (FEDBIOT_JS_REPLICAS=3, as the production overlay sets), and the four services
 * in-process as test/services/distributed-job.test.ts runs them. When the first client update of round 1 is
 * published, the node that leads the job's state KV stream is SIGKILLed; the surviving two elect new leaders and
 * the job must end with exactly the standalone job's final metrics. The second test restarts the killed node on its
 * store (the same container with its bind-mounted data dir, or the same process config and store dir) and waits
 * until its replicas of the job's streams are current again.
 *
 * Connections: the test's own connection is given all three URLs. A service takes one NATS_URL, so the services are
 * spread over the three nodes (each is given one node's URL) and learn the other two from the cluster's INFO
 * (`client_advertise`); whichever node dies, some services lose their server and fail over to a surviving one.
 *
 * FEDBIOT_TEST_NODELOSS_REPLICAS=1 runs the same test with R1 state: the first test then fails (the job's state
 * lived only on the killed node), which shows it checks the replication.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { JobSpec } from '../../libs/fedbiot/src/index.js';
import { REPLICAS_ENV, stateBucketName, taskStreamName } from '../../libs/protocol/src/index.js';
import type { RunningService } from '../../services/common/http.js';
import type { LogRecord } from '../../services/common/logger.js';
import type { ServiceRole } from '../../services/common/role.js';
import { startAggregator } from '../../services/aggregator/aggregator.module.js';
import { tmpWithDemoFederation } from '../support/federation.js';
import {
  finalEvals,
  servicesSpec,
  standaloneFinal,
  startWorkers,
  trainerSpec,
  type EvalEvent,
} from '../support/services-job.js';
import { hasNatsServer } from '../../libs/protocol/test/support/nats-server.js';
import { eventually } from '../../libs/protocol/test/support/nats.js';
import { startTestCluster, type TestCluster } from '../../libs/protocol/test/support/nats-cluster-containers.js';

const REPLICAS = Number(process.env['FEDBIOT_TEST_NODELOSS_REPLICAS'] ?? '3');
/** How long the distributed job may take after the kill before the test calls it stuck (the box may be loaded). */
const JOB_LIMIT_MS = 240_000;

let tmp = '';

/** The job of test/services/distributed-job.test.ts (3 clients: add, sub, mul; 2 rounds). */
const spec = (id: string): JobSpec => servicesSpec(tmp, id, 'node-loss test job');

const row = (e: EvalEvent) => ({ method: e.method, client: e.client, test_loss: e.test_loss, accuracy: e.accuracy });
const byKey = (a: { method: string; client: string }, b: { method: string; client: string }): number =>
  `${a.method}/${a.client}`.localeCompare(`${b.method}/${b.client}`);

let reference: Promise<EvalEvent[]> | undefined;
/** The standalone job's final eval rows (run once; the job id enters no seed). */
const standalone = (): Promise<EvalEvent[]> =>
  (reference ??= standaloneFinal(spec(`standalone-${process.pid}`)).then((r) => r.rows));

// The services create the job's streams and buckets with FEDBIOT_JS_REPLICAS (read when each is created): set for
// the whole file, since both variants run at once.
const savedReplicas = process.env[REPLICAS_ENV];
before(async () => {
  process.env[REPLICAS_ENV] = String(REPLICAS);
  tmp = await tmpWithDemoFederation('fedbiot-nodeloss-');
});
after(() => {
  if (savedReplicas === undefined) delete process.env[REPLICAS_ENV];
  else process.env[REPLICAS_ENV] = savedReplicas;
  rmSync(tmp, { recursive: true, force: true });
});

/** Waits until the cluster has a meta leader and places an R`REPLICAS` stream (then removes the probe). */
async function clusterReady(nc: NatsConnection): Promise<JetStreamManager> {
  const jsm = await eventually('JetStream meta leader', () => jetstreamManager(nc));
  const probe = `PROBE_${process.pid}`;
  await eventually('an R3 stream placed', async () => {
    await jsm.streams.add({ name: probe, subjects: [`probe.${process.pid}`], num_replicas: 3 });
  });
  await eventually('probe removed', () => jsm.streams.delete(probe));
  return jsm;
}

/** The job's streams whose leader is killed and whose replicas are checked. */
const jobStreams = (jobId: string): string[] => [`KV_${stateBucketName(jobId)}`, taskStreamName(jobId)];

interface Outcome {
  cluster: TestCluster;
  killed: string;
  newLeader: string;
  jobMs: number;
  recoverMs: number;
  caughtUpMs?: number;
}

/**
 * Runs the job on a fresh cluster and kills the leader of the job's state KV stream when the first update of round 1
 * is published; with `restart`, starts the killed node again on its store once a new leader serves, and waits until
 * its replicas of the job's streams are current. Asserts the job's final metrics equal the standalone job's.
 */
async function jobLosingANode(name: string, restart: boolean): Promise<Outcome> {
  // The cluster starts (mostly waiting on Docker and elections) while the standalone job computes the reference.
  const starting = startTestCluster(3);
  const ref = await standalone().catch(async (e: unknown) => {
    await starting.then((c) => c.stop()).catch(() => {});
    throw e;
  });
  const cluster = await starting;
  const jobId = `${name}-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId);
  const logs: LogRecord[] = [];
  const services: RunningService<ServiceRole>[] = [];
  let nc: NatsConnection | undefined;
  let loss: Promise<Omit<Outcome, 'cluster' | 'jobMs'>> | undefined;
  let killedAtLog = -1;
  // Fails the wait for the job as soon as the node loss itself fails (no new leader: the state was not replicated).
  let lossFailed: ((e: unknown) => void) | undefined;
  const lossFailure = new Promise<never>((_, reject) => (lossFailed = reject));
  lossFailure.catch(() => {});
  let passed = false;
  try {
    nc = await connect({ servers: cluster.servers, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    const jsm = await clusterReady(nc);
    const leaderOf = async (stream: string): Promise<string> => {
      const l = (await jsm.streams.info(stream)).cluster?.leader;
      if (!l) throw new Error(`${stream} has no leader yet`);
      return l;
    };
    const lose = async (): Promise<Omit<Outcome, 'cluster' | 'jobMs'>> => {
      const [kvStream, queueStream] = jobStreams(jobId) as [string, string];
      const killed = await eventually('the state stream leader', () => leaderOf(kvStream));
      const queueLeader = await eventually('the work queue leader', () => leaderOf(queueStream));
      await cluster.kill(killed);
      killedAtLog = logs.length;
      const t0 = Date.now();
      console.log(`node loss: killed ${killed} (leads ${kvStream}; ${queueStream} led by ${queueLeader})`);
      // A new leader that answers: the stream info comes from the new leader only once it was elected.
      const newLeader = await eventually('a new state stream leader', async () => {
        const l = await leaderOf(kvStream);
        if (l === killed) throw new Error(`leader still ${l}`);
        return l;
      });
      const recoverMs = Date.now() - t0;
      if (!restart) return { killed, newLeader, recoverMs };
      await cluster.restart(killed);
      // Caught up: the restarted node's replica of each job stream is current (nats-server 2.9 reports it in the
      // leader's stream info; until then the replica is missing from the list or `current: false`).
      for (const stream of jobStreams(jobId))
        await eventually(`${killed} current on ${stream}`, async () => {
          const info = await jsm.streams.info(stream);
          const back = info.cluster?.replicas?.find((r) => r.name === killed);
          if (back === undefined || !back.current)
            throw new Error(`${killed} not current: ${JSON.stringify(info.cluster)}`);
        });
      return { killed, newLeader, recoverMs, caughtUpMs: Date.now() - t0 };
    };
    const sink = (r: LogRecord): void => {
      logs.push(r);
      if (r.msg === 'update published' && r['round'] === 1 && loss === undefined) {
        loss = lose();
        loss.catch((e: unknown) => lossFailed?.(e));
      }
    };
    const url = (i: number): string => cluster.servers[i % cluster.servers.length]!;
    // The aggregator on node 0, the others spread over nodes 1 and 2.
    const node: Record<string, number> = { 'server-alignment': 1, evaluator: 2, 'trainer-a': 1, 'trainer-b': 2 };
    services.push(
      ...(await startWorkers({
        natsUrl: (service) => url(node[service]!),
        spec: s,
        logSink: sink,
        trainerSpec: trainerSpec(s, tmp),
        // A task whose ack was lost with the node comes back after this long.
        ackWaitMs: 5000,
        cacheIn: tmp,
      })),
    );
    const t1 = Date.now();
    const aggregator = await startAggregator({ natsUrl: url(0), spec: s, logSink: sink, deadlineMs: JOB_LIMIT_MS }, 0);
    services.push(aggregator);
    for (const stream of jobStreams(jobId)) {
      const info = await eventually(`${stream} info`, () => jsm.streams.info(stream));
      assert.equal(info.config.num_replicas, REPLICAS, `${stream} num_replicas`);
    }
    let timer: NodeJS.Timeout | undefined;
    const final = await Promise.race([
      aggregator.role.done,
      lossFailure,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the job did not finish in ${JOB_LIMIT_MS} ms`)), JOB_LIMIT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    const jobMs = Date.now() - t1;
    assert.ok(loss, 'a node was killed during round 1');
    const lost = await loss;
    assert.equal(final?.round, 2);
    assert.ok(
      logs.slice(killedAtLog).some((r) => r.msg === 'update published' && r['round'] === 1),
      'round 1 was still running when the node died: an update of it was published afterwards',
    );
    const rows = finalEvals(aggregator.role, s.job.rounds);
    // An update the aggregator could not fetch while the cluster elected leaders is dropped from its round (the
    // round then closes on quorum and the result differs): named here, before the metrics show it.
    const rejected = logs.filter((r) => r.msg === 'update rejected');
    assert.deepEqual(rejected, [], 'no update was rejected during the node loss');
    // Difference 0: the same numbers as the standalone job, not merely close ones.
    assert.deepEqual(rows.map(row).toSorted(byKey), ref.map(row).toSorted(byKey));
    if (restart) {
      // Still current after the job ran on without it (it followed the rounds that came after its restart).
      for (const stream of jobStreams(jobId)) {
        const info = await eventually(`${stream} info`, () => jsm.streams.info(stream));
        const back = info.cluster?.replicas?.find((r) => r.name === lost.killed);
        assert.ok(back?.current, `${lost.killed} current on ${stream} at the end: ${JSON.stringify(info.cluster)}`);
      }
    }
    passed = true;
    return { cluster, jobMs, ...lost };
  } finally {
    if (!passed) {
      for (const r of logs) if (r.level !== 'debug') console.log(JSON.stringify(r));
      for (const n of cluster.nodes) console.log(`---- ${n.name}\n${cluster.log(n.name).slice(-3000)}`);
    }
    for (const svc of services.toReversed()) await svc.close().catch(() => {});
    await nc?.close().catch(() => {});
    await cluster.stop();
  }
}

const how = (c: TestCluster): string =>
  c.via === 'container' ? 'containers of the local NATS image on a Docker network' : 'nats-server processes';

// Both variants at once, each on its own cluster: most of a run is waiting (elections, Docker, redelivery), so
// together they take little more than the longer one (the standalone reference is computed once for both).
describe('a NATS node lost mid-round', { concurrency: 2 }, () => {
  test(
    'a 3-node JetStream cluster loses the leader of the job state mid-round; the job (R3 state) equals the standalone job',
    { skip: !hasNatsServer && 'neither nats-server nor Docker with the local NATS image', timeout: 600_000 },
    async () => {
      const o = await jobLosingANode('nodeloss', false);
      console.log(
        `node loss: ${how(o.cluster)}, R${REPLICAS}; killed ${o.killed}, new leader ${o.newLeader} after ${o.recoverMs} ms; job ${(o.jobMs / 1000).toFixed(1)} s; final metrics equal the standalone job's`,
      );
    },
  );

  test(
    'the killed node restarts on its store, catches up (its replicas current), and the job equals the standalone job',
    { skip: !hasNatsServer && 'neither nats-server nor Docker with the local NATS image', timeout: 600_000 },
    async () => {
      const o = await jobLosingANode('noderestart', true);
      console.log(
        `node restart: ${how(o.cluster)}, R${REPLICAS}; killed ${o.killed}, new leader ${o.newLeader} after ${o.recoverMs} ms, restarted and current after ${o.caughtUpMs} ms; job ${(o.jobMs / 1000).toFixed(1)} s`,
      );
    },
  );
});

/**
 * The four services from the built image, as the cluster runs them: NATS (local/nats:2.9.10, JetStream) and
 * server-alignment, evaluator, two client-trainer replicas and the aggregator, each a container of
 * local/fedbiot-services:dev started through Testcontainers (the trainers from local/fedbiot-trainer:dev, the same code
 * built without models/, as the cluster's trainer pods run it), complete a 2-round FedBiOT job with 3 clients.
 *
 * Each service container gets the pod contract of deploy/README.md section 1 as far as it applies without a
 * cluster: uid 1000, read-only root filesystem, tmpfs /tmp and model cache (/var/cache/fedbiot, given as
 * FEDBIOT_CACHE, the variable libs/model reads), all capabilities dropped, no-new-privileges,
 * NATS_URL / JOB_SPEC / HTTP_PORT from the environment, the job spec mounted read-only at /etc/fedbiot/job.yaml
 * (the ConfigMap). The demo base model is baked into the image (/app/models/demo-llama, by
 * scripts/build-app-image.sh); the federation data is generated here and bind-mounted read-only, as a data volume
 * would be. Host networking keeps every connection on loopback (docs/engine-notes.md §9),
 * so NATS listens on a free port, and the services' HTTP_PORT=0 picks free ports they log.
 *
 * Two crashes are injected into round 1, as `docker kill` (SIGKILL, no shutdown code runs): the trainer replica that
 * starts round 1's first task is killed mid-task, and the aggregator is killed as round 1 starts collecting and
 * replaced by a new aggregator container.
 *
 * Asserts: the job completes (KV job state `completed`, last round ROUNDS - 1) within a deadline, no surviving service
 * logs an error, every client's update was published for every round and both trainer replicas took tasks, the
 * killed trainer's task was redone by the other replica as a redelivery, the replacement aggregator resumed at round
 * 1 from KV without re-running round 0, alignment ran once per call;
 * the aggregator's final AdapEmu / AdapFu rows are finite and equal the standalone runJob's on this host for the same
 * spec (|d loss| < 1e-6, same accuracy); the evaluator container, asked for base + AdapFu with the final LoRAs,
 * repeats the AdapFu rows exactly, matches the standalone base rows, and AdapFu's pooled test loss beats the base
 * model's; every pod answers /health/ready, and the aggregator's /metrics shows round 2.
 *
 * Needs the images, built before the tests (the test builds nothing):
 *   scripts/build-nats-image.sh && scripts/build-node-image.sh && npm run build && scripts/build-app-image.sh &&
 *   scripts/build-app-image.sh --trainer
 * Skipped, loudly, only when `docker info` fails. Testcontainers runs with Ryuk disabled (its image comes from
 * Docker Hub) and the host override `localhost`; `after` stops every container it started, also on failure.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { stringify } from 'yaml';
import type { StartedTestContainer } from 'testcontainers';
import { writeDemoFederation } from '../../libs/data/src/index.js';
import { resolveJobSpec, runJob } from '../../libs/fedbiot/src/index.js';
import { EvalReplySchema } from '../../services/common/evaluation-wire.js';
import { ClientNats } from '@nestjs/microservices';
import { natsTransportOptions, sendWithRetry } from '../../services/common/nats-transport.js';
import {
  EvalRequestSchema,
  JOB_STATE_KEY,
  JobStateSchema,
  PROTOCOL_VERSION,
  StateStore,
  connectTransport,
  evaluateSubject,
  stateBucketName,
  type JobState,
} from '../../libs/protocol/src/index.js';
import { repoRoot } from '../support/paths.js';
import { freePort } from '../../libs/protocol/test/support/nats-server.js';

const NATS_IMAGE = process.env['FEDBIOT_NATS_IMAGE'] ?? 'local/nats:2.9.10';
const APP_IMAGE = process.env['FEDBIOT_APP_IMAGE'] ?? 'local/fedbiot-services:dev';
/** The trainers' image: no model weights in it (issue 11), so a trainer that needed the model could not start. */
const TRAINER_IMAGE = process.env['FEDBIOT_TRAINER_IMAGE'] ?? 'local/fedbiot-trainer:dev';
const ROUNDS = 2;
const CLIENTS = ['add', 'sub', 'mul'];
/** The whole job (5 model loads, 2 rounds, 3 evaluations) normally takes well under a minute here. */
const JOB_DEADLINE_MS = 150_000;
const SPEC_DIR = '/etc/fedbiot';
const FEDERATION_DIR = '/var/lib/fedbiot/federation';
const MODEL_DIR = '/app/models/demo-llama';
const CACHE_DIR = '/var/cache/fedbiot';
const EXITED = '<container stopped>';
/** Short, so the killed trainer's task comes back quickly; the demo tasks train in about a second. */
const ACK_WAIT_MS = 5000;

/** Why Docker cannot be used, or null when `docker info` answers. */
function dockerUnavailable(): string | null {
  const r = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 20_000 });
  if (r.error) return `docker info: ${r.error.message}`;
  if (r.status !== 0) return `docker info exited ${r.status}: ${r.stderr.trim().split('\n').at(-1)}`;
  return null;
}
const noDocker = dockerUnavailable();
if (noDocker)
  console.error(
    `\n*** SKIPPING the Testcontainers test (${import.meta.url}): no Docker engine.\n*** ${noDocker}\n` +
      '*** The service images are NOT exercised in this run.\n',
  );

/** One JSON log line of a service container (non-JSON lines keep their text in `msg`). */
type Line = { msg: string; level?: string; [k: string]: unknown };
interface Service {
  readonly name: string;
  readonly container: StartedTestContainer;
  readonly lines: Line[];
}

let tmp = '';
const started: StartedTestContainer[] = [];
const services: Service[] = [];

/** Makes a tree readable by the containers' uid 1000 (mkdtemp creates 0700 directories owned by the test's uid). */
function openForReading(dir: string): void {
  chmodSync(dir, 0o755);
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) openForReading(p);
    else chmodSync(p, 0o644);
  }
}

function collect(lines: Line[], onLine?: (line: Line) => void): (stream: Readable) => void {
  return (stream) => {
    // The log stream ends when the container stops: recorded, so the wait below fails at once on a crash.
    stream.once('end', () => lines.push({ msg: EXITED, level: 'error' }));
    createInterface({ input: stream }).on('line', (text) => {
      let line: Line;
      try {
        const v = JSON.parse(text) as unknown;
        line = v !== null && typeof v === 'object' ? (v as Line) : { msg: text };
      } catch {
        line = { msg: text };
      }
      lines.push(line);
      onLine?.(line);
    });
  };
}

before(async () => {
  if (noDocker) return;
  tmp = mkdtempSync(join(tmpdir(), 'fedbiot-containers-'));
  for (const image of [NATS_IMAGE, APP_IMAGE, TRAINER_IMAGE]) {
    const r = spawnSync('docker', ['image', 'inspect', image], { stdio: 'ignore' });
    assert.equal(
      r.status,
      0,
      `image ${image} is missing: build it first (scripts/build-nats-image.sh, scripts/build-app-image.sh [--trainer])`,
    );
  }
  // The label scripts/build-app-image.sh records from what it shipped: the trainers' image holds no models/.
  const weights = spawnSync(
    'docker',
    ['image', 'inspect', '--format', '{{index .Config.Labels "org.fedbiot.model-weights"}}', TRAINER_IMAGE],
    { encoding: 'utf8' },
  ).stdout.trim();
  assert.equal(
    weights,
    'false',
    `${TRAINER_IMAGE} must be built without models (scripts/build-app-image.sh --trainer)`,
  );
  // Before the first import of testcontainers, which reads them: Ryuk's image would come from Docker Hub, and the
  // host override skips the "inside a container" probe that pulls alpine (this VM has a /.dockerenv).
  process.env['TESTCONTAINERS_RYUK_DISABLED'] ??= 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] ??= 'localhost';
});

after(async () => {
  // Stop in reverse start order; a failed stop must not keep the others running.
  for (const c of started.toReversed()) await c.stop({ timeout: 2000 }).catch(() => {});
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test(
  'NATS and the four services from the built images (2 trainer replicas) complete a 2-round FedBiOT job through a trainer kill and an aggregator kill',
  { skip: noDocker ? `no Docker engine (${noDocker})` : false, timeout: 240_000 },
  async () => {
    const { GenericContainer, Wait } = await import('testcontainers');
    const t0 = performance.now();
    const jobId = `containers-${process.pid}-${Date.now().toString(36)}`;

    // The federation of test/services/distributed-job.test.ts, and its job spec with the containers' paths.
    const fedDir = join(tmp, 'federation');
    await writeDemoFederation(fedDir, {
      seed: 5,
      trainPerClient: 48,
      testPerClient: 8,
      globalTestPerTask: 2,
      corpusBytes: 60_000,
    });
    const specDir = join(tmp, 'spec');
    const raw = {
      job: { id: jobId, seed: 3, rounds: ROUNDS, outDir: '/tmp/runs' },
      model: { checkpoint: MODEL_DIR, threads: 1 },
      data: { federation: FEDERATION_DIR, maxLength: 96 },
      clients: { localSteps: 3, batchSize: 4, lr: 5e-3 },
      alignment: { preRounds: 1, stepsPerRound: 2, batchSize: 4 },
      eval: { maxNewTokens: 4, mode: 'simulation' },
      baselines: { offsiteTuning: false, localOnly: false },
    };
    mkdirSync(specDir);
    writeFileSync(join(specDir, 'job.yaml'), stringify(raw));
    openForReading(tmp);

    // The standalone job on this host with the same spec (host paths; the image's model is a copy of models/):
    // the reference for the containers' numbers, and its base-model evaluation.
    const hostSpec = resolveJobSpec(
      {
        ...raw,
        job: { ...raw.job, outDir: join(tmp, 'runs') },
        model: { ...raw.model, checkpoint: join(repoRoot, 'models', 'demo-llama') },
        data: { ...raw.data, federation: fedDir },
      },
      'container test job (standalone)',
    );
    const { runDir } = await runJob(hostSpec, { log: () => {} });
    const standalone = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Line)
      .filter((e) => e['kind'] === 'eval');
    const tStandalone = performance.now();

    const natsPort = await freePort();
    const natsUrl = `nats://127.0.0.1:${natsPort}`;
    const natsLines: Line[] = [];
    const nats = await new GenericContainer(NATS_IMAGE)
      .withNetworkMode('host')
      .withCommand(['-js', '-sd', '/data', '-a', '127.0.0.1', '-p', String(natsPort)])
      .withLogConsumer(collect(natsLines))
      .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
      .withStartupTimeout(30_000)
      .start();
    started.push(nats);
    const tNats = performance.now();

    /** A service container with the pod's restrictions; resolves once the service logged "ready". */
    const startService = async (
      name: string,
      main: string,
      env: Record<string, string> = {},
      onLine?: (service: string, line: Line) => void,
    ): Promise<Service> => {
      const lines: Line[] = [];
      const c = new GenericContainer(main === 'client-trainer' ? TRAINER_IMAGE : APP_IMAGE)
        .withNetworkMode('host')
        .withUser('1000:1000')
        .withCommand([`dist/services/${main}/main.js`])
        .withEnvironment({
          NATS_URL: natsUrl,
          JOB_SPEC: `${SPEC_DIR}/job.yaml`,
          HTTP_PORT: '0',
          ORT_EXECUTION_PROVIDER: 'cpu',
          POD_NAME: name,
          // The cluster mounts the model-cache volume here. libs/model reads FEDBIOT_CACHE (graph folders, fp32
          // conversions); its default under $HOME is on the read-only root and fails.
          FEDBIOT_CACHE: CACHE_DIR,
          ...env,
        })
        .withBindMounts([
          { source: specDir, target: SPEC_DIR, mode: 'ro' },
          { source: fedDir, target: FEDERATION_DIR, mode: 'ro' },
        ])
        .withTmpFs({ '/tmp': 'rw,mode=1777,size=64m', [CACHE_DIR]: 'rw,mode=1777,size=256m' })
        .withDroppedCapabilities('ALL')
        .withSecurityOpt('no-new-privileges')
        .withLogConsumer(collect(lines, onLine && ((l) => onLine(name, l))))
        .withWaitStrategy(Wait.forLogMessage(/"msg":"ready"/))
        .withStartupTimeout(120_000);
      // Testcontainers has no builder method for it; the manifests set readOnlyRootFilesystem.
      (c as unknown as { hostConfig: { ReadonlyRootfs?: boolean } }).hostConfig.ReadonlyRootfs = true;
      let container: StartedTestContainer;
      try {
        container = await c.start();
      } catch (e) {
        throw new Error(`${name} did not become ready: ${(e as Error).message}\n${dump(lines)}`, { cause: e });
      }
      started.push(container);
      const s = { name, container, lines };
      services.push(s);
      return s;
    };

    // The crashes, injected from the log streams so that they land mid-task / mid-round: SIGKILL, no shutdown code.
    const killed = new Set<string>();
    const kill = (name: string): void => {
      if (killed.has(name)) return;
      killed.add(name);
      const s = services.find((x) => x.name === name);
      assert.ok(s, `service ${name} to kill`);
      spawnSync('docker', ['kill', '--signal', 'KILL', s.container.getId()], { stdio: 'ignore' });
    };
    let trainerKill: { name: string; clientId: unknown } | undefined;
    const onTrainerLine = (name: string, l: Line): void => {
      if (trainerKill === undefined && l.msg === 'training' && l['round'] === 1) {
        trainerKill = { name, clientId: l['clientId'] };
        kill(name);
      }
    };
    const onFirstAggregatorLine = (name: string, l: Line): void => {
      if (l.msg === 'round collecting' && l['round'] === 1) kill(name);
    };

    let passed = false;
    try {
      // The trainers are both listening before the aggregator enqueues round 0, so each replica gets work.
      // allSettled: every start has finished (and its container is in `started` for `after`) before a failure throws.
      const starts = await Promise.allSettled([
        startService('server-alignment', 'server-alignment'),
        startService('evaluator', 'evaluator'),
        ...['client-trainer-1', 'client-trainer-2'].map((name) =>
          startService(name, 'client-trainer', { REPLICA: name, ACK_WAIT_MS: String(ACK_WAIT_MS) }, onTrainerLine),
        ),
      ]);
      const [alignment, evaluator, trainerA, trainerB] = starts.map((r) => {
        if (r.status === 'rejected') throw r.reason;
        return r.value;
      }) as [Service, Service, Service, Service];
      const firstAggregator = await startService('aggregator', 'aggregator', {}, onFirstAggregatorLine);
      let aggregator = firstAggregator;
      const tReady = performance.now();

      const nc = await connectTransport(natsUrl);
      try {
        const state = await StateStore.open(nc, { bucket: stateBucketName(jobId) });
        let job: JobState | undefined;
        for (const until = Date.now() + JOB_DEADLINE_MS; ; await new Promise((r) => setTimeout(r, 500))) {
          job = (await state.get(JOB_STATE_KEY, JobStateSchema))?.value;
          // The killed aggregator is replaced, as its Deployment would do (the trainer's sibling takes over its work).
          if (killed.has('aggregator') && aggregator === firstAggregator)
            aggregator = await startService('aggregator-2', 'aggregator');
          const failed = services
            .filter((s) => !killed.has(s.name))
            .flatMap((s) => s.lines.filter((l) => l.level === 'error').map((l) => [s.name, l]));
          assert.deepEqual(failed, [], 'no service logged an error');
          if (job?.status === 'completed' && aggregator.lines.some((l) => l.msg === 'job completed')) break;
          assert.ok(
            Date.now() < until,
            `job not completed after ${JOB_DEADLINE_MS} ms; KV job state: ${JSON.stringify(job)}`,
          );
        }
        const tDone = performance.now();
        assert.ok(job);
        assert.equal(job.totalRounds, ROUNDS);
        assert.equal(job.lastCompletedRound, ROUNDS - 1, 'rounds are 0-based in KV');
        assert.ok(job.adapterLora && job.emulatorLora, 'the final LoRAs are in the object store');

        // Every client's update was published in every round (a task killed after its publish could be published
        // twice, with the same bytes), and both replicas took part.
        const published = (s: Service): string[] =>
          s.lines.filter((l) => l.msg === 'update published').map((l) => `${l['round']}/${l['clientId']}`);
        const byReplica = [published(trainerA), published(trainerB)];
        assert.deepEqual(
          [...new Set(byReplica.flat())].toSorted(),
          [0, 1].flatMap((r) => CLIENTS.map((c) => `${r}/${c}`)).toSorted(),
          'an update for every client and round',
        );
        assert.ok(
          byReplica.every((u) => u.length > 0),
          `both trainer replicas trained: ${JSON.stringify(byReplica)}`,
        );
        // The crashes happened, and were recovered from: the killed trainer's task was redone by the other replica
        // as a redelivery; the replacement aggregator resumed at round 1 from KV and did not run round 0 again.
        assert.ok(trainerKill, 'a trainer was killed during a round 1 task');
        assert.deepEqual([...killed].toSorted(), ['aggregator', trainerKill.name].toSorted());
        const survivor = trainerKill.name === trainerA.name ? trainerB : trainerA;
        const redone = survivor.lines.find(
          (l) => l.msg === 'update published' && l['round'] === 1 && l['clientId'] === trainerKill!.clientId,
        );
        // The kill is sent when the trainer's 'training' line reaches this process through Docker's log stream; on
        // a loaded machine the tiny task can finish and publish before SIGKILL lands. Then there is nothing to redo.
        const victim = trainerKill.name === trainerA.name ? trainerA : trainerB;
        const publishedBeforeKill = victim.lines.some(
          (l) => l.msg === 'update published' && l['round'] === 1 && l['clientId'] === trainerKill!.clientId,
        );
        if (!publishedBeforeKill) {
          assert.ok(redone, `${survivor.name} published the killed task ${JSON.stringify(trainerKill)}`);
          assert.ok(Number(redone['delivery']) >= 2, `as a redelivery: ${JSON.stringify(redone)}`);
        }
        assert.notEqual(aggregator, firstAggregator, 'a replacement aggregator ran');
        const resumed = aggregator.lines.find((l) => l.msg === 'resuming job');
        assert.equal(resumed?.['round'], 1, `the replacement resumed at round 1: ${JSON.stringify(resumed)}`);
        assert.ok(
          !aggregator.lines.some((l) => l.msg === 'round collecting' && l['round'] === 0),
          'round 0 is not run again',
        );
        const aligned = alignment.lines.filter((l) => l.msg === 'aligned').map((l) => l['call']);
        assert.deepEqual(aligned, [0, 1, 2], 'pre-alignment, then one alignment after each round');

        // The aggregator's final evaluation: AdapEmu and AdapFu for each client and pooled, all finite.
        const finalRows = aggregator.lines.filter((l) => l.msg === 'eval' && l['round'] === ROUNDS);
        assert.equal(finalRows.length, 2 * (CLIENTS.length + 1), JSON.stringify(finalRows));
        for (const r of finalRows) {
          assert.ok(
            Number.isFinite(r['test_loss']) && (r['test_loss'] as number) > 0,
            `test loss ${JSON.stringify(r)}`,
          );
          const acc = r['accuracy'] as number;
          assert.ok(acc >= 0 && acc <= 1, `accuracy ${JSON.stringify(r)}`);
        }

        // The same numbers as the standalone job on this host (test/services/distributed-job.test.ts measured 0).
        const reference = standalone.filter((e) => e['phase'] === 'main' && e['round'] === ROUNDS);
        assert.equal(reference.length, finalRows.length, 'standalone final rows');
        for (const ref of reference) {
          const got = finalRows.find((r) => r['method'] === ref['method'] && r['client'] === ref['client']);
          assert.ok(got, `container row ${ref['method']}/${ref['client']}`);
          const d = Math.abs((got['test_loss'] as number) - (ref['test_loss'] as number));
          assert.ok(
            d < 1e-6,
            `${ref['method']}/${ref['client']} test loss ${got['test_loss']} vs standalone ${ref['test_loss']}`,
          );
          assert.equal(got['accuracy'], ref['accuracy'], `${ref['method']}/${ref['client']} accuracy`);
        }

        // Ask the evaluator container for the base model's scores next to AdapFu's with the job's final LoRAs: its
        // AdapFu rows must be the ones the aggregator logged (the same container, same inputs: deterministic), and
        // FedBiOT's full model must beat the untuned base on the clients' test sets.
        const subject = evaluateSubject(jobId, ROUNDS);
        // As the aggregator asks: Nest's NATS transport to the evaluator's @MessagePattern.
        const request = EvalRequestSchema.parse({
          protocolVersion: PROTOCOL_VERSION,
          jobId,
          round: ROUNDS,
          adapterLora: job.adapterLora,
          emulatorLora: job.emulatorLora,
          modes: ['base', 'adapFu'],
        });
        const client = new ClientNats(natsTransportOptions(natsUrl, {}));
        const reply = EvalReplySchema.safeParse(
          await sendWithRetry(client, subject, request, 60_000).finally(() => client.close()),
        );
        assert.ok(reply.success, `eval reply: ${reply.success ? '' : reply.error.message}`);
        assert.ok('rows' in reply.data, `evaluator error: ${JSON.stringify(reply.data)}`);
        const rows = reply.data.rows;
        const row = (method: string, client: string) => {
          const r = rows.find((x) => x.method === method && x.client === client);
          assert.ok(r, `evaluator row ${method}/${client}`);
          return r;
        };
        for (const client of [...CLIENTS, 'all']) {
          const logged = finalRows.find((l) => l['method'] === 'fedbiot-adapfu' && l['client'] === client);
          assert.ok(logged, `aggregator AdapFu row for ${client}`);
          assert.equal(row('fedbiot-adapfu', client).testLoss, logged['test_loss'], `AdapFu ${client} test loss`);
          assert.equal(row('fedbiot-adapfu', client).accuracy, logged['accuracy'], `AdapFu ${client} accuracy`);
          const refBase = standalone.find(
            (e) => e['phase'] === 'base' && e['method'] === 'base' && e['client'] === client,
          );
          assert.ok(refBase, `standalone base row for ${client}`);
          assert.ok(
            Math.abs(row('base', client).testLoss - (refBase['test_loss'] as number)) < 1e-6,
            `base ${client} test loss ${row('base', client).testLoss} vs standalone ${refBase['test_loss']}`,
          );
        }
        const base = row('base', 'all');
        const adapFu = row('fedbiot-adapfu', 'all');
        assert.ok(
          adapFu.testLoss < base.testLoss,
          `AdapFu pooled test loss ${adapFu.testLoss} beats the base model's ${base.testLoss}`,
        );

        // The HTTP side every pod exposes: ready, and the aggregator's metrics at the final round.
        for (const s of services.filter((x) => !killed.has(x.name))) {
          const url = s.lines.find((l) => l.msg === 'http listening')?.['url'];
          assert.ok(typeof url === 'string', `${s.name} logged its HTTP address`);
          assert.equal((await fetch(`${url}/health/ready`)).status, 200, `${s.name} /health/ready`);
          if (s === aggregator)
            assert.match(await (await fetch(`${url}/metrics`)).text(), /fl_rounds_completed\{service="aggregator"\} 2/);
          if (s === evaluator) assert.equal((await fetch(`${url}/metrics`)).status, 200);
        }
        passed = true;
        console.log(
          `standalone ${secs(t0, tStandalone)} s; containers: NATS ${secs(tStandalone, tNats)} s, services ready ${secs(tNats, tReady)} s, job ${secs(tReady, tDone)} s; ` +
            `pooled test loss base ${base.testLoss.toFixed(4)} -> AdapFu ${adapFu.testLoss.toFixed(4)}; ` +
            `updates per replica ${byReplica.map((u) => u.length).join('/')}; killed ${trainerKill.name} ` +
            `(task ${String(trainerKill.clientId)}, ${redone ? `redone on delivery ${String(redone['delivery'])}` : 'published before the kill landed'}) and the aggregator`,
        );
      } finally {
        await nc.close();
      }
    } finally {
      if (!passed) {
        for (const s of services) console.log(`--- ${s.name}\n${dump(s.lines)}`);
        console.log(`--- nats\n${dump(natsLines)}`);
      }
    }
  },
);

/** Seconds from `a` to `b` (performance.now() values), for the timing line. */
function secs(a: number, b: number): string {
  return ((b - a) / 1000).toFixed(1);
}

/** A container's log, without debug lines, for failure output. */
function dump(lines: readonly Line[]): string {
  return lines
    .filter((l) => l.level !== 'debug')
    .map((l) => JSON.stringify(l))
    .join('\n');
}

/**
 * The job the services tests run (test/services/*): its spec, the standalone reference run, the comparison of final
 * metrics, the worker services started around an aggregator, and the teardown. One home, so every services test
 * runs the same job and compares it the same way.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { resolveJobSpec, runJob, type JobSpec } from '../../libs/fedbiot/src/index.js';
import { connectTransport, deleteJobResources } from '../../libs/protocol/src/index.js';
import type { Aggregator } from '../../services/aggregator/aggregator.js';
import { startAggregator } from '../../services/aggregator/aggregator.module.js';
import type { RunningService } from '../../services/common/http.js';
import type { LogRecord } from '../../services/common/logger.js';
import type { ServiceRole } from '../../services/common/role.js';
import type { ClientTrainer } from '../../services/client-trainer/trainer.js';
import type { Evaluator } from '../../services/evaluator/evaluator.js';
import type { ServerAlignment } from '../../services/server-alignment/alignment.js';
import { startTrainer } from '../../services/client-trainer/trainer.module.js';
import { startEvaluator } from '../../services/evaluator/evaluator.module.js';
import { startAlignment } from '../../services/server-alignment/alignment.module.js';
import { demoJobRawSpec } from './federation.js';
import { metricsOf } from './json-lines.js';

/**
 * The services tests' job, demoJobRawSpec's (the settings of test/e2e/fedbiot-job.test.ts): 3 clients (add, sub, mul), 2 rounds, on
 * the demo federation in `tmp`/federation (test/support/federation.ts). `extra` adds or replaces top-level sections
 * (for example `privacy`). The evaluator runs in simulation mode: it scores AdapEmu and AdapFu on every client's
 * test set, so the whole table can be compared with the standalone job's.
 */
export function servicesRawSpec(
  tmp: string,
  id: string,
  extra: Record<string, unknown> = {},
  federation = join(tmp, 'federation'),
): Record<string, unknown> {
  return { ...demoJobRawSpec(tmp, id, { data: { federation }, eval: { mode: 'simulation' } }), ...extra };
}

/** `servicesRawSpec` resolved; `what` names it in validation errors. */
export const servicesSpec = (tmp: string, id: string, what: string, extra?: Record<string, unknown>): JobSpec =>
  resolveJobSpec(servicesRawSpec(tmp, id, extra), what);

/**
 * A trainer's job spec: model.checkpoint names a folder under `tmp` that does not exist, since a client never holds
 * the model (it trains on the emulator package the aggregator publishes).
 */
export const trainerSpec = (s: JobSpec, tmp: string): JobSpec => ({
  ...s,
  model: { ...s.model, checkpoint: join(tmp, 'no-model-at-clients') },
});

/** An eval event of metrics.jsonl (and of the aggregator's events). */
export interface EvalEvent {
  round: number;
  kind: string;
  method: string;
  client: string;
  test_loss: number;
  accuracy: number;
}

/** The events of a run folder's metrics.jsonl (test/support/json-lines.ts). */
export { metricsOf };

/**
 * The standalone run of the job `spec()` gives (runJob, silent), started on the first call and shared by the later
 * ones: its run folder and metrics.jsonl events. `spec` is called then, so it may read what `before` set up.
 */
export function standaloneOnce(
  spec: () => JobSpec,
): () => Promise<{ runDir: string; events: Record<string, unknown>[] }> {
  let run: Promise<{ runDir: string; events: Record<string, unknown>[] }> | undefined;
  return () =>
    (run ??= runJob(spec(), { log: () => {} }).then(({ runDir }) => ({ runDir, events: metricsOf(runDir) })));
}

/** The standalone reference: `s` run by runJob; its final eval rows (AdapEmu + AdapFu for add, sub, mul, all). */
export async function standaloneFinal(s: JobSpec): Promise<{ rows: EvalEvent[]; ms: number; runDir: string }> {
  const t0 = performance.now();
  const { runDir } = await runJob(s, { log: () => {} });
  const ms = performance.now() - t0;
  const rows = (metricsOf(runDir) as unknown as (EvalEvent & { phase: string })[]).filter(
    (e) => e.phase === 'main' && e.kind === 'eval' && e.round === s.job.rounds,
  );
  assert.equal(rows.length, 8, 'AdapEmu + AdapFu rows for add, sub, mul, all');
  return { rows, ms, runDir };
}

/** The aggregator's eval events of the last round. */
export const finalEvals = (a: Aggregator, rounds: number): EvalEvent[] =>
  a.events.filter((e) => e.kind === 'eval' && e.round === rounds) as unknown as EvalEvent[];

/** Asserts the distributed final eval rows equal the standalone ones; returns the largest loss difference. */
export function assertSameFinal(got: readonly EvalEvent[], reference: readonly EvalEvent[]): number {
  assert.equal(got.length, reference.length);
  let maxDiff = 0;
  for (const ref of reference) {
    const row = got.find((g) => g.method === ref.method && g.client === ref.client);
    assert.ok(row, `distributed row ${ref.method}/${ref.client}`);
    const d = Math.abs(row.test_loss - ref.test_loss);
    assert.ok(d < 1e-6, `${ref.method}/${ref.client} test loss ${row.test_loss} vs standalone ${ref.test_loss}`);
    assert.equal(row.accuracy, ref.accuracy, `${ref.method}/${ref.client} accuracy`);
    maxDiff = Math.max(maxDiff, d);
  }
  return maxDiff;
}

/** The sha256 of a file's bytes, in hex. */
export const sha256Of = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

type ResultRow = { method: string; client: string; test_loss: number; accuracy: number };
/** The FedBiOT rows of a run folder's results.json (method, client, test loss, accuracy). */
export const fedbiotResultRows = (runDir: string): ResultRow[] =>
  (JSON.parse(readFileSync(join(runDir, 'results.json'), 'utf8')) as { rows: ResultRow[] }).rows
    .filter((r) => r.method.startsWith('fedbiot-'))
    .map(({ method, client, test_loss, accuracy }) => ({ method, client, test_loss, accuracy }));

export interface WorkerOptions {
  /** The NATS URL of every service, or of each (named server-alignment, evaluator, trainer-a, trainer-b). */
  natsUrl: string | ((service: string) => string);
  spec: JobSpec;
  logSink: (r: LogRecord) => void;
  /** The trainers' spec, when it differs from `spec` (see trainerSpec). */
  trainerSpec?: JobSpec;
  /** Each trainer keeps its cache in `<cacheIn>/<job id>-<trainer name>` (the trainer's default otherwise). */
  cacheIn?: string;
  /** One trainer per client (started with its clientId) instead of the pooled replicas trainer-a and trainer-b. */
  perClient?: readonly string[];
  ackWaitMs?: number;
  dashboard?: boolean;
}

/**
 * Starts server-alignment, the evaluator and the trainers (replicas trainer-a and trainer-b, or one per client with
 * `perClient`, in its order): all services but the aggregator.
 */
export async function startWorkers(
  o: WorkerOptions,
): Promise<[RunningService<ServerAlignment>, RunningService<Evaluator>, ...RunningService<ClientTrainer>[]]> {
  const { natsUrl } = o;
  const url = typeof natsUrl === 'string' ? () => natsUrl : natsUrl;
  const alignment = await startAlignment({ natsUrl: url('server-alignment'), spec: o.spec, logSink: o.logSink }, 0);
  const evaluator = await startEvaluator({ natsUrl: url('evaluator'), spec: o.spec, logSink: o.logSink }, 0, {
    dashboard: o.dashboard,
  });
  const trainers: RunningService<ClientTrainer>[] = [];
  const names = o.perClient ?? ['trainer-a', 'trainer-b'];
  for (const name of names)
    trainers.push(
      await startTrainer(
        {
          natsUrl: url(name),
          spec: o.trainerSpec ?? o.spec,
          ...(o.perClient ? { clientId: name } : { replica: name }),
          logSink: o.logSink,
          ackWaitMs: o.ackWaitMs,
          cacheRoot: o.cacheIn === undefined ? undefined : join(o.cacheIn, `${o.spec.job.id}-${name}`),
        },
        0,
      ),
    );
  return [alignment, evaluator, ...trainers];
}

/**
 * The server's services around data owners' trainers that are starting (`trainersStarted`): server-alignment, the
 * evaluator and the aggregator (round deadline `deadlineMs`), each started with the options `as(role)` gives (its
 * own NATS identity); all of them, trainers last, join `services`. Returns the aggregator and the trainers.
 */
export async function startServerAround(
  trainersStarted: Promise<RunningService<ClientTrainer>[]>,
  as: (role: string) => Parameters<typeof startAlignment>[0],
  deadlineMs: number,
  services: RunningService<ServiceRole>[],
): Promise<{ aggregator: RunningService<Aggregator>; trainers: RunningService<ClientTrainer>[] }> {
  services.push(await startAlignment(as('server-alignment'), 0));
  services.push(await startEvaluator(as('evaluator'), 0));
  const aggregator = await startAggregator({ ...as('aggregator'), deadlineMs }, 0);
  services.push(aggregator);
  const trainers = await trainersStarted;
  services.push(...trainers);
  return { aggregator, trainers };
}

/**
 * Starts an aggregator with `opts`, adds it to `services` and waits for it to end the job at its last round
 * (asserted). `whileRunning`, if given, runs once it has started, before the wait. Returns the aggregator.
 */
export async function aggregatorFinishes(
  opts: Parameters<typeof startAggregator>[0],
  services: RunningService<ServiceRole>[],
  whileRunning?: (aggregator: RunningService<Aggregator>) => Promise<void>,
): Promise<RunningService<Aggregator>> {
  const aggregator = await startAggregator(opts, 0);
  services.push(aggregator);
  await whileRunning?.(aggregator);
  const final = await aggregator.role.done;
  assert.equal(final?.round, opts.spec.job.rounds, 'the job ends at its last round');
  return aggregator;
}

/**
 * The job `o.spec` run by the services: the workers (startWorkers, caches under `o.tmp`) and an aggregator that writes
 * the run folder under `<tmp>/<job id>-owner-runs`, all joining `o.services`; returns once the job has ended
 * (aggregatorFinishes), with the aggregator and the run folder.
 */
export async function runDistributed(
  o: Pick<ServicesJob, 'sink' | 'services'> & { natsUrl: string; spec: JobSpec; tmp: string; deadlineMs: number },
): Promise<{ aggregator: RunningService<Aggregator>; runDir: string }> {
  const { natsUrl, spec, sink: logSink, services, tmp, deadlineMs } = o;
  services.push(...(await startWorkers({ natsUrl, spec, logSink, cacheIn: tmp })));
  const jobId = spec.job.id;
  assert.ok(jobId, 'a distributed job has a job.id');
  const runsDir = join(tmp, `${jobId}-owner-runs`);
  const aggregator = await aggregatorFinishes({ natsUrl, spec, logSink, deadlineMs, runsDir }, services);
  return { aggregator, runDir: join(runsDir, jobId) };
}

/** Asserts that the aggregator logged resuming the job at `round` (a replacement picking the job up from KV). */
export function assertResumedAt(logs: readonly LogRecord[], round: number): void {
  assert.ok(
    logs.some((r) => r.service === 'aggregator' && r.msg === 'resuming job' && r['round'] === round),
    `resumed at round ${round}`,
  );
}

/** What a services test gathers and closes: the services' log records (and their sink), the services, a connection. */
export interface ServicesJob {
  logs: LogRecord[];
  sink: (r: LogRecord) => void;
  nc: NatsConnection;
  services: RunningService<ServiceRole>[];
}

/** A services test's start: no log record yet, no service yet, a connection to `natsUrl`. */
export async function openServicesJob(natsUrl: string): Promise<ServicesJob> {
  const logs: LogRecord[] = [];
  return { logs, sink: (r) => void logs.push(r), nc: await connectTransport(natsUrl), services: [] };
}

/**
 * An aggregator that is stopped as soon as it collects round 1 (its records go to `logs` as service aggregator-1);
 * returns once it has stopped without finishing the job, for a replacement to resume it.
 */
export async function aggregatorStoppedInRound1(o: {
  natsUrl: string;
  spec: JobSpec;
  logs: LogRecord[];
  runsDir: string;
}): Promise<void> {
  let stopped: Promise<void> | undefined;
  let first: RunningService<Aggregator> | undefined;
  const firstSink = (r: LogRecord): void => {
    o.logs.push({ ...r, service: 'aggregator-1' });
    if (r.msg === 'round collecting' && r['round'] === 1) stopped ??= first!.close();
  };
  first = await startAggregator(
    { natsUrl: o.natsUrl, spec: o.spec, logSink: firstSink, deadlineMs: 60_000, runsDir: o.runsDir },
    0,
  );
  await assert.rejects(first.role.done, 'the first aggregator does not finish the job');
  await stopped;
}

/**
 * The end of a services test: on failure prints what the services logged (but debug records and what `quiet`
 * drops), closes the services in reverse order, deletes the job's NATS resources and closes `nc`.
 */
export async function stopServicesJob(o: {
  passed: boolean;
  logs: readonly LogRecord[];
  services: readonly RunningService<ServiceRole>[];
  nc: NatsConnection;
  jobId: string;
  quiet?: (r: LogRecord) => boolean;
}): Promise<void> {
  if (!o.passed) for (const r of o.logs) if (r.level !== 'debug' && !o.quiet?.(r)) console.log(JSON.stringify(r));
  for (const svc of o.services.toReversed()) await svc.close().catch(() => {});
  await deleteJobResources(o.nc, o.jobId).catch(() => {});
  await o.nc.close();
}

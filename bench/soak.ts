/**
 * Soak (issue 17): many lightweight simulated clients over several rounds on loopback, the real aggregator path
 * (runRounds over natsRoundPorts with the job's aggregation settings, update-bucket limits and blob pruning) in
 * this process, trainer replicas as child processes (bench/soak-clients.ts) on a private nats-server started here.
 * The job runs twice: undisturbed, then disturbed by random SIGKILLs of trainer replicas (each replaced by a fresh
 * one; its task is redelivered after ackWait), one pause of the nats-server (SIGSTOP, then SIGCONT) while a
 * round is being collected, and one aggregator restart (in-process: its round loop aborted mid-collection and a
 * new one resumed from the last checkpoint, as the service resumes from KV). The disturbed run's final adapter must equal the undisturbed one bit for bit.
 * Reported: wall time, per-round median, kills, the aggregator's peak RSS (sampled; this process holds no
 * trainer), blob bytes it downloaded, and what the pruner deleted.
 *
 * `npm run bench -- soak [--clients 200] [--rounds 5] [--replicas 6] [--kill-every-ms 1500] [--pause-ms 3000]`
 * writes bench/results/soak.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runRounds, type CoordinatorState, resolveJobSpec } from '../libs/fedbiot/src/index.js';
import { encodeLora, putLora } from '../services/common/lora-blobs.js';
import { natsRoundPorts } from '../services/common/ports-nats.js';
import { type LoraWeights, readModelConfig } from '../libs/model/src/index.js';
import { RoundBlobPruner, blobBucketName, connectTransport } from '../libs/protocol/src/index.js';
import { argOf, freePort, machine, printTable, waitForNats, writeResults, withPeakRss } from './common.js';
import { fakeJob, fakeRoundSettings, openFakeAggregatorStores } from './fake-federation.js';
import type { ReplicaConfig } from './soak-clients.js';

const NATS_SERVER_BIN = process.env['NATS_SERVER_BIN'] ?? '/usr/sbin/nats-server';

interface Disturbance {
  readonly killEveryMs: number;
  readonly pauseMs: number;
  readonly pauseRound: number;
  readonly restartRound: number;
}

interface RunResult {
  readonly adapter: LoraWeights;
  readonly wallMs: number;
  readonly roundMs: number[];
  readonly peakRssMib: number;
  readonly kills: number;
  readonly paused: boolean;
  readonly bytesDown: number;
  readonly pruned: number;
  readonly rejected: number;
  readonly restarts: number;
}

async function soakRun(
  name: string,
  clients: number,
  rounds: number,
  replicas: number,
  disturb: Disturbance | null,
): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), `soak-${name}-`));
  const port = await freePort();
  const nats = spawn(NATS_SERVER_BIN, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js')], {
    stdio: 'ignore',
  });
  const url = `nats://127.0.0.1:${port}`;
  const kids = new Set<ChildProcess>();
  let stopping = false;
  try {
    const jobId = `soak-${name}`;
    const spec = resolveJobSpec(
      { job: { id: jobId, seed: 9, rounds }, aggregation: { deadlineMs: 600_000 } },
      'soak bench',
    );
    const cfg = await readModelConfig(join(process.cwd(), 'models', 'demo-llama', 'config.json'));
    const { ctx, adapter0, emulator0 } = fakeJob(jobId, spec, cfg);
    const clientIds = Array.from({ length: clients }, (_, i) => `c${String(i).padStart(3, '0')}`);

    await waitForNats(url);
    // Reconnect forever: a paused broker must not close the aggregator's connection.
    const nc = await connectTransport(url, { timeoutMs: 5000, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    const stores = await openFakeAggregatorStores(nc, ctx, clientIds, encodeLora(adapter0).length, 'memory');
    const { blobs, buckets } = stores;

    const cfgFile = join(dir, 'replica.json');
    const replica: ReplicaConfig = { natsUrl: url, ctx, ackWaitMs: 3000 };
    writeFileSync(cfgFile, JSON.stringify(replica));
    const script = join(process.cwd(), 'dist', 'bench', 'soak-clients.js');
    const startReplica = (): void => {
      const kid = spawn(process.execPath, [script, cfgFile], { stdio: 'ignore' });
      kids.add(kid);
      kid.on('exit', () => {
        kids.delete(kid);
        if (!stopping && !disturb) console.warn(`${name}: a trainer replica exited unexpectedly`);
      });
    };
    for (let i = 0; i < replicas; i++) startReplica();

    let kills = 0;
    let paused = false;
    const killer = disturb
      ? setInterval(() => {
          const all = [...kids];
          const victim = all[Math.floor(Math.random() * all.length)];
          if (!victim) return;
          victim.kill('SIGKILL');
          kills++;
          startReplica();
        }, disturb.killEveryMs)
      : undefined;

    const roundStarts: number[] = [];
    let pruned = 0;
    let rejected = 0;
    let restarts = 0;
    let pruner = new RoundBlobPruner(blobs, [blobBucketName(jobId), ...buckets], spec.aggregation.keepBlobRounds);
    // The last checkpoint, what the aggregator service keeps in KV and resumes from.
    let ckpt: CoordinatorState = { round: 0, adapter: adapter0, emulator: emulator0, preAligned: true };
    const t0 = performance.now();
    const once = async (): Promise<CoordinatorState> => {
      const stop = new AbortController();
      const ports = natsRoundPorts(ctx, {
        nc,
        ...stores,
        nextAlignCall: 0,
        signal: stop.signal,
        onRejected: () => rejected++,
        onPhase: (round, phase) => {
          if (phase !== 'collecting') return;
          roundStarts[round] = performance.now();
          if (disturb && round === disturb.pauseRound && !paused) {
            paused = true;
            nats.kill('SIGSTOP');
            setTimeout(() => nats.kill('SIGCONT'), disturb.pauseMs);
          }
          // The aggregator "dies" mid-collection once: its round loop is aborted and a new one resumes from the
          // last checkpoint, re-planning the round (duplicate tasks are dropped by the queue; updates published
          // meanwhile are replayed from KV).
          if (disturb && round === disturb.restartRound && restarts === 0) setTimeout(() => stop.abort(), 1000);
        },
      });
      return runRounds({ ...ports, evaluate: async () => [] }, fakeRoundSettings(ctx, rounds, clientIds), ckpt, {
        onEvent: (e) => {
          if (e.kind === 'rejected') rejected++;
        },
        onCheckpoint: async (s) => {
          const a = await putLora(blobs, s.adapter);
          const e = await putLora(blobs, s.emulator);
          ckpt = s;
          pruned += (await pruner.checkpoint(new Set([a.name, e.name]))).deleted;
        },
      }).catch((e: unknown) => {
        if (!stop.signal.aborted) throw e;
        restarts++;
        // A restarted service has no marks yet (RoundBlobPruner doc).
        pruner = new RoundBlobPruner(blobs, [blobBucketName(jobId), ...buckets], spec.aggregation.keepBlobRounds);
        return once();
      });
    };
    const { value: final, peakRss } = await withPeakRss(once);
    const wallMs = performance.now() - t0;
    if (killer) clearInterval(killer);
    const ends = [...roundStarts.slice(1), t0 + wallMs];
    const roundMs = roundStarts.map((s, i) => ends[i]! - s);
    const bytesDown = blobs.stats.bytesDown;
    stopping = true;
    for (const k of kids) k.kill('SIGTERM');
    await nc.close();
    return {
      adapter: final.adapter,
      wallMs,
      roundMs,
      peakRssMib: peakRss / 2 ** 20,
      kills,
      paused,
      bytesDown,
      pruned,
      rejected,
      restarts,
    };
  } finally {
    stopping = true;
    for (const k of kids) k.kill('SIGKILL');
    nats.kill('SIGCONT');
    nats.kill('SIGTERM');
    await new Promise((r) => (nats.exitCode !== null ? r(null) : nats.once('exit', r)));
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

function sameBits(a: LoraWeights, b: LoraWeights): boolean {
  for (const [k, v] of a.tensors) {
    const w = b.tensors.get(k);
    if (
      !w ||
      !Buffer.from(v.buffer, v.byteOffset, v.byteLength).equals(Buffer.from(w.buffer, w.byteOffset, w.byteLength))
    )
      return false;
  }
  return a.tensors.size === b.tensors.size;
}

export async function main(args: string[]): Promise<void> {
  if (!existsSync(NATS_SERVER_BIN)) throw new Error(`soak: needs nats-server at ${NATS_SERVER_BIN} (NATS_SERVER_BIN)`);
  const clients = Number(argOf(args, 'clients') ?? 200);
  const rounds = Number(argOf(args, 'rounds') ?? 5);
  const replicas = Number(argOf(args, 'replicas') ?? 6);
  const killEveryMs = Number(argOf(args, 'kill-every-ms') ?? 1500);
  const pauseMs = Number(argOf(args, 'pause-ms') ?? 3000);
  console.log(`soak: ${clients} clients x ${rounds} rounds, ${replicas} trainer replicas; undisturbed run ...`);
  const calm = await soakRun('calm', clients, rounds, replicas, null);
  console.log(
    `disturbed run: a replica SIGKILLed every ${killEveryMs} ms, the broker paused ${pauseMs} ms in round 2, the aggregator restarted in round 3 ...`,
  );
  const rough = await soakRun('rough', clients, rounds, replicas, {
    killEveryMs,
    pauseMs,
    pauseRound: Math.min(2, rounds - 1),
    restartRound: Math.min(3, rounds - 1),
  });
  const equal = sameBits(calm.adapter, rough.adapter);
  const row = (c: string, r: RunResult): Record<string, unknown> => ({
    case: c,
    clients,
    rounds,
    replicas,
    wall_s: +(r.wallMs / 1000).toFixed(1),
    round_ms_median: +median(r.roundMs).toFixed(0),
    round_ms_max: +Math.max(...r.roundMs).toFixed(0),
    kills: r.kills,
    aggregator_restarts: r.restarts,
    nats_pause_ms: r.paused ? pauseMs : 0,
    agg_peak_rss_mib: +r.peakRssMib.toFixed(0),
    agg_bytes_down: r.bytesDown,
    blobs_pruned: r.pruned,
    rejected: r.rejected,
    equals_undisturbed: c === 'calm' ? true : equal,
    machine: machine(),
    date: new Date().toISOString(),
  });
  const rows = [row('calm', calm), row('rough', rough)];
  printTable(rows, [
    'case',
    'wall_s',
    'round_ms_median',
    'round_ms_max',
    'kills',
    'aggregator_restarts',
    'nats_pause_ms',
    'agg_peak_rss_mib',
    'agg_bytes_down',
    'blobs_pruned',
    'rejected',
    'equals_undisturbed',
  ]);
  console.log(`wrote ${writeResults('soak', rows)}`);
  if (!equal) throw new Error('soak: the disturbed run ended with a different adapter than the undisturbed one');
}

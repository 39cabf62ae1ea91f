/**
 * Scale (issue 18): N simulated lightweight clients on loopback against one private nats-server, the real aggregator
 * path in this process (runRounds over natsRoundPorts: plan, work queue, collection, per-client update buckets,
 * screening, aggregation as updates arrive), for demo-sized and LLaMA-7B-shaped LoRAs (q,v r8 on the top 2 of 32
 * layers, hidden 4096: 1 MiB adapter update per client per round; the FedBiOT broadcast also carries the emulator
 * LoRA of the 24 emulator layers that a 0.2 drop rate keeps).
 *
 * Clients are tasks pulled by trainer replicas (child processes of this file, `--concurrency` pull loops each): a
 * client's task downloads the broadcast (adapter + emulator) from the object store, reports that it has it, "trains"
 * in 0 ms (bench/soak-clients.ts fakeLocal), puts its update into its own bucket, stores it in KV and publishes it.
 *
 * Per round, all measured in this run: round wall time; the aggregator's time from the round's collection closing
 * to the new adapter (download tail, last folds, rounding); this process's CPU time and peak RSS (sampled every
 * 10 ms; it holds only the aggregator: replicas are other processes); the broker's CPU (utime+stime of the
 * nats-server process, /proc); bytes into and out of the broker (/varz in_bytes, out_bytes); and the broadcast
 * fan-out time (round start to the last client holding the broadcast).
 *
 * `npm run bench -- scale [--clients 10,100,1000] [--rounds 3] [--sizes demo,7b] [--replicas 2] [--concurrency 4]
 *  [--rounds-at-1000 1] [--compare]` writes bench/results/scale.json. `--compare` also runs the largest 7B case with the
 * collect-all path (every update held until the round closes) for its peak RSS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { runRounds, type CoordinatorState, resolveJobSpec } from '../libs/fedbiot/src/index.js';
import { readModelConfig, type ModelConfig } from '../libs/model/src/index.js';
import { RoundBlobPruner, blobBucketName, connectTransport, type Consumption } from '../libs/protocol/src/index.js';
import { encodeLora, putLora } from '../services/common/lora-blobs.js';
import { natsRoundPorts, type PortsContext } from '../services/common/ports-nats.js';
import { argOf, freePort, machine, printTable, waitForNats, writeResults } from './common.js';
import { fakeJob, fakeRoundSettings, openFakeAggregatorStores } from './fake-federation.js';
import { startFakeTrainer } from './soak-clients.js';

const NATS_SERVER_BIN = process.env['NATS_SERVER_BIN'] ?? '/usr/sbin/nats-server';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const fetchedSubject = (jobId: string): string => `bench.${jobId}.fetched`;

type Size = 'demo' | '7b';
type Mode = 'stream' | 'collect-all';

interface ReplicaConfig {
  readonly natsUrl: string;
  readonly ctx: PortsContext;
  readonly concurrency: number;
}

/** LLaMA-2-7B's shape (hidden 4096, 32 layers, 32 heads of 128, MHA, FFN 11008) on the demo config's other fields. */
function llama7bShape(demo: ModelConfig): ModelConfig {
  return {
    ...demo,
    vocabSize: 32000,
    hiddenSize: 4096,
    intermediateSize: 11008,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 32,
    headDim: 128,
  };
}

/** One simulated client's task loop (bench/soak-clients.ts), which also reports each fetched broadcast. */
const clientLoop = (ctx: PortsContext, nc: NatsConnection): Promise<Consumption> =>
  startFakeTrainer(ctx, nc, {
    onFetched: (round, clientId) => nc.publish(fetchedSubject(ctx.jobId), JSON.stringify({ round, clientId })),
    warn: (m) => console.error(`scale replica: ${m}`),
  });

/** utime + stime of a process in ms (/proc/<pid>/stat fields 14 and 15, in clock ticks of 10 ms). */
function procCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

async function varz(monitorPort: number): Promise<{ in: number; out: number; mem: number }> {
  const r = await fetch(`http://127.0.0.1:${monitorPort}/varz`);
  const v = (await r.json()) as { in_bytes: number; out_bytes: number; mem: number };
  return { in: v.in_bytes, out: v.out_bytes, mem: v.mem };
}

interface RoundRow {
  readonly round: number;
  readonly roundMs: number;
  readonly fanoutMs: number;
  readonly closeToAdapterMs: number;
  readonly aggCpuMs: number;
  readonly aggPeakRssMib: number;
  readonly brokerCpuMs: number;
  readonly brokerRssMib: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly rejected: number;
}

interface CaseResult {
  readonly rows: RoundRow[];
  readonly updateBytes: number;
  readonly broadcastBytes: number;
  readonly setupMs: number;
  readonly baseRssMib: number;
}

async function scaleCase(
  size: Size,
  clients: number,
  rounds: number,
  replicas: number,
  concurrency: number,
  mode: Mode,
): Promise<CaseResult> {
  const dir = mkdtempSync(join(tmpdir(), `scale-${size}-${clients}-`));
  const port = await freePort();
  const monitorPort = await freePort();
  const nats = spawn(
    NATS_SERVER_BIN,
    ['-a', '127.0.0.1', '-p', String(port), '-m', String(monitorPort), '-js', '-sd', join(dir, 'js')],
    { stdio: 'ignore' },
  );
  const url = `nats://127.0.0.1:${port}`;
  const kids = new Set<ChildProcess>();
  const tSetup = performance.now();
  try {
    const jobId = `scale-${size}-${clients}`;
    const spec = resolveJobSpec(
      {
        job: { id: jobId, seed: 3, rounds },
        aggregation: {
          deadlineMs: 600_000,
          // collect-all: a relative bound needs the round's median, so every update is held until the round closes
          // (the path trimmed mean and median take too); 1e9 x the median rejects nothing.
          ...(mode === 'collect-all' ? { relativeNormBound: 1e9 } : {}),
        },
      },
      'scale bench',
    );
    const demo = await readModelConfig(join(process.cwd(), 'models', 'demo-llama', 'config.json'));
    const cfg = size === '7b' ? llama7bShape(demo) : demo;
    const { ctx, adapter0, emulator0 } = fakeJob(jobId, spec, cfg);
    const updateBytes = encodeLora(adapter0).length;
    const broadcastBytes = updateBytes + encodeLora(emulator0).length;
    const clientIds = Array.from({ length: clients }, (_, i) => `c${String(i).padStart(4, '0')}`);

    await waitForNats(url);
    const nc = await connectTransport(url, { timeoutMs: 10_000 });
    const stores = await openFakeAggregatorStores(nc, ctx, clientIds, updateBytes);
    const { blobs, buckets } = stores;

    // Broadcast fan-out: each client reports when it holds the broadcast.
    const fetchedAt = new Map<number, { n: number; last: number }>();
    const fetchedSub = nc.subscribe(fetchedSubject(jobId), {
      callback: (_e, m) => {
        const { round } = JSON.parse(new TextDecoder().decode(m.data)) as { round: number };
        const f = fetchedAt.get(round) ?? { n: 0, last: 0 };
        f.n++;
        f.last = performance.now();
        fetchedAt.set(round, f);
      },
    });

    // Every pull loop reports once its consumer is live; round 0 starts after that (no process start in its figures).
    const loops = replicas * concurrency;
    let ready = 0;
    let allReady: () => void = () => {};
    const readyPromise = new Promise<void>((r) => (allReady = r));
    const readySub = nc.subscribe(`bench.${jobId}.ready`, { callback: () => void (++ready === loops && allReady()) });
    const cfgFile = join(dir, 'replica.json');
    writeFileSync(cfgFile, JSON.stringify({ natsUrl: url, ctx, concurrency } satisfies ReplicaConfig));
    const script = join(process.cwd(), 'dist', 'bench', 'scale.js');
    for (let i = 0; i < replicas; i++) {
      const kid = spawn(process.execPath, [script, '--replica', cfgFile], { stdio: ['ignore', 'ignore', 'inherit'] });
      kids.add(kid);
      kid.on('exit', () => kids.delete(kid));
    }
    let readyTimer: NodeJS.Timeout | undefined;
    await Promise.race([
      readyPromise,
      new Promise<never>(
        (_r, reject) =>
          (readyTimer = setTimeout(
            () => reject(new Error(`scale: ${ready} of ${loops} pull loops started in 120 s`)),
            120_000,
          )),
      ),
    ]).finally(() => clearTimeout(readyTimer));
    readySub.unsubscribe();
    const pruner = new RoundBlobPruner(blobs, [blobBucketName(jobId), ...buckets], spec.aggregation.keepBlobRounds);
    const setupMs = performance.now() - tSetup;

    // Per-round sampling.
    let peakRss = 0;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 10);
    const baseRssMib = process.memoryUsage().rss / 2 ** 20;
    const rows: RoundRow[] = [];
    let cur: {
      round: number;
      t0: number;
      cpu: NodeJS.CpuUsage;
      broker: number;
      v: { in: number; out: number };
      closedAt: number;
      rejected: number;
    } | null = null;
    let rejected = 0;
    const begin = async (round: number): Promise<void> => {
      peakRss = process.memoryUsage().rss;
      cur = {
        round,
        t0: performance.now(),
        cpu: process.cpuUsage(),
        broker: procCpuMs(nats.pid!),
        v: await varz(monitorPort),
        closedAt: NaN,
        rejected,
      };
    };
    const end = async (): Promise<void> => {
      if (!cur) return;
      const t1 = performance.now();
      const c = process.cpuUsage(cur.cpu);
      const v = await varz(monitorPort);
      const f = fetchedAt.get(cur.round);
      if (!f || f.n < clients)
        throw new Error(`round ${cur.round}: ${f?.n ?? 0} of ${clients} clients fetched the broadcast`);
      rows.push({
        round: cur.round,
        roundMs: t1 - cur.t0,
        fanoutMs: f.last - cur.t0,
        closeToAdapterMs: t1 - cur.closedAt,
        aggCpuMs: (c.user + c.system) / 1000,
        aggPeakRssMib: Math.max(peakRss, process.memoryUsage().rss) / 2 ** 20,
        brokerCpuMs: procCpuMs(nats.pid!) - cur.broker,
        brokerRssMib: v.mem / 2 ** 20,
        bytesIn: v.in - cur.v.in,
        bytesOut: v.out - cur.v.out,
        rejected: rejected - cur.rejected,
      });
      cur = null;
    };

    const ports = natsRoundPorts(ctx, {
      nc,
      ...stores,
      nextAlignCall: 0,
      onRejected: () => rejected++,
      onPhase: (_round, phase) => {
        if (phase === 'collected' && cur) cur.closedAt = performance.now();
      },
    });
    const start: CoordinatorState = { round: 0, adapter: adapter0, emulator: emulator0, preAligned: true };
    try {
      await runRounds(
        {
          ...ports,
          trainClients: async (round, cs, a, e, sink) => {
            await begin(round);
            return ports.trainClients(round, cs, a, e, sink);
          },
          evaluate: async () => [],
        },
        fakeRoundSettings(ctx, rounds, clientIds),
        start,
        {
          onEvent: (e) => {
            if (e.kind === 'rejected') rejected++;
          },
          onCheckpoint: async (s) => {
            // The round's adapter exists here; what follows (pruning) is bookkeeping outside the figures.
            await end();
            await pruner.checkpoint(new Set([(await putLora(blobs, s.adapter)).name]));
          },
        },
      );
    } finally {
      clearInterval(sampler);
      fetchedSub.unsubscribe();
    }
    await nc.close();
    return { rows, updateBytes, broadcastBytes, setupMs, baseRssMib };
  } finally {
    for (const k of kids) k.kill('SIGKILL');
    nats.kill('SIGTERM');
    await new Promise((r) => (nats.exitCode !== null ? r(null) : nats.once('exit', r)));
    rmSync(dir, { recursive: true, force: true });
  }
}

const MiB = 2 ** 20;
/** What a round cost, in the per-case and the summary tables. */
const ROUND_COST_COLUMNS = [
  'round_ms',
  'fanout_ms',
  'close_to_adapter_ms',
  'agg_cpu_ms',
  'agg_peak_rss_mib',
  'broker_cpu_ms',
] as const;
/** What went through the broker and what the aggregator rejected, last in both tables. */
const TRAFFIC_COLUMNS = ['in_mib', 'out_mib', 'rejected'] as const;

export async function main(args: string[]): Promise<void> {
  if (!existsSync(NATS_SERVER_BIN)) throw new Error(`scale: needs nats-server at ${NATS_SERVER_BIN} (NATS_SERVER_BIN)`);
  const clientsList = (argOf(args, 'clients') ?? '10,100,1000').split(',').map(Number);
  const rounds = Number(argOf(args, 'rounds') ?? 3);
  const roundsAt1000 = Number(argOf(args, 'rounds-at-1000') ?? rounds);
  const sizes = (argOf(args, 'sizes') ?? 'demo,7b').split(',') as Size[];
  const replicas = Number(argOf(args, 'replicas') ?? 2);
  const concurrency = Number(argOf(args, 'concurrency') ?? 4);
  const compare = args.includes('--compare');
  const cases: { size: Size; clients: number; mode: Mode }[] = [];
  for (const size of sizes) for (const clients of clientsList) cases.push({ size, clients, mode: 'stream' });
  if (compare && sizes.includes('7b'))
    cases.push({ size: '7b', clients: Math.max(...clientsList.filter((n) => n <= 100)), mode: 'collect-all' });
  const out: Record<string, unknown>[] = [];
  for (const c of cases) {
    const r = c.clients >= 1000 ? roundsAt1000 : rounds;
    console.log(`scale: ${c.size} LoRA, ${c.clients} clients x ${r} rounds (${c.mode}) ...`);
    const res = await scaleCase(c.size, c.clients, r, replicas, concurrency, c.mode);
    for (const row of res.rows)
      out.push({
        case: `${c.size}-${c.clients}-${c.mode}-r${row.round}`,
        size: c.size,
        clients: c.clients,
        mode: c.mode,
        round: row.round,
        update_kib: +(res.updateBytes / 1024).toFixed(1),
        broadcast_kib: +(res.broadcastBytes / 1024).toFixed(1),
        round_ms: +row.roundMs.toFixed(0),
        fanout_ms: +row.fanoutMs.toFixed(0),
        close_to_adapter_ms: +row.closeToAdapterMs.toFixed(1),
        agg_cpu_ms: +row.aggCpuMs.toFixed(0),
        agg_peak_rss_mib: +row.aggPeakRssMib.toFixed(0),
        agg_base_rss_mib: +res.baseRssMib.toFixed(0),
        broker_cpu_ms: row.brokerCpuMs,
        broker_rss_mib: +row.brokerRssMib.toFixed(0),
        in_mib: +(row.bytesIn / MiB).toFixed(1),
        out_mib: +(row.bytesOut / MiB).toFixed(1),
        rejected: row.rejected,
        setup_ms: +res.setupMs.toFixed(0),
        replicas,
        concurrency,
        machine: machine(),
        date: new Date().toISOString(),
      });
    printTable(out.slice(-res.rows.length), ['case', ...ROUND_COST_COLUMNS, ...TRAFFIC_COLUMNS]);
  }
  console.log('');
  printTable(out, ['case', 'update_kib', 'broadcast_kib', ...ROUND_COST_COLUMNS, 'broker_rss_mib', ...TRAFFIC_COLUMNS]);
  const file = writeResults('scale', out);
  console.log(`wrote ${file}`);
  // Verdict over every streaming row of this machine in bench/results/scale.json (this run's and earlier runs' of
  // other N): how the aggregator's peak RSS and the hub's bytes grow with N, per LoRA size.
  const all = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>[];
  for (const size of ['demo', '7b'] as const) {
    const rs = all.filter((r) => r['mode'] === 'stream' && r['size'] === size && r['machine'] === machine());
    if (rs.length === 0) continue;
    const ns = [...new Set(rs.map((r) => r['clients'] as number))].toSorted((a, b) => a - b);
    const rss = ns.map((n) =>
      Math.max(...rs.filter((r) => r['clients'] === n).map((r) => r['agg_peak_rss_mib'] as number)),
    );
    const outPerClient = Math.max(...rs.map((r) => (r['out_mib'] as number) / (r['clients'] as number)));
    console.log(
      `verdict (${size}): aggregator peak RSS ${rss.join(' / ')} MiB at ${ns.join(' / ')} clients (aggregation as updates arrive: no N copies held); the hub sends up to ${outPerClient.toFixed(2)} MiB per client per round (broadcast ${((rs[0]!['broadcast_kib'] as number) / 1024).toFixed(2)} MiB each), linear in N.`,
    );
  }
}

// As a process: one trainer replica running `concurrency` simulated clients' pull loops until killed.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === '--replica') {
  const cfg = JSON.parse(readFileSync(process.argv[3]!, 'utf8')) as ReplicaConfig;
  const nc = await connectTransport(cfg.natsUrl, { timeoutMs: 10_000 });
  await Promise.all(
    Array.from({ length: cfg.concurrency }, async () => {
      let started = false;
      for (;;) {
        const c = await clientLoop(cfg.ctx, nc).catch(() => null);
        if (c && !started) {
          started = true;
          nc.publish(`bench.${cfg.ctx.jobId}.ready`);
        }
        if (c) await c.done;
        await sleep(200);
      }
    }),
  );
}

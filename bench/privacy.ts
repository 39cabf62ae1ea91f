/**
 * Secure aggregation cost per round (libs/privacy): in-process run of the four rounds for n clients, timing every
 * client's work (mean per client) and the server's, and the JSON bytes each way, against plain FedAvg of the same
 * vectors (FedAvgAccumulator, float32 upload). Adapters (LoRA r = 8 on q_proj + v_proj of 2 adapter layers):
 *   demo   hidden 192, 6 heads x 32, kv 2 x 32: q 8*192 + 192*8, v 8*192 + 64*8 -> 5120 per layer, L = 10240
 *   smollm hidden 576, 9 heads x 64, kv 3 x 64: q 8*576 + 576*8, v 8*576 + 192*8 -> 15360 per layer, L = 30720
 * `npm run bench -- privacy [--clients 3,10,50] [--plus-k 8]` writes bench/results/privacy.json;
 * `npm run bench -- privacy --utility` measures what DP costs on the demo instead (privacy-utility.ts).
 */
import { FedAvgAccumulator } from '../libs/fedbiot/src/index.js';
import { SecAggClient, SecAggServer, seededRng, type SecAggConfig } from '../libs/privacy/src/index.js';
import { argOf, machine, printTable, writeResults } from './common.js';

const loraQV = (hidden: number, qOut: number, vOut: number, r: number, layers: number): number =>
  layers * (r * hidden + qOut * r + r * hidden + vOut * r);

const ADAPTERS = [
  { name: 'demo', L: loraQV(192, 192, 64, 8, 2) },
  { name: 'smollm-135m', L: loraQV(576, 576, 192, 8, 2) },
];

const bytesOf = (m: unknown): number => Buffer.byteLength(JSON.stringify(m));

function vectors(n: number, L: number): { values: Float32Array; weight: number }[] {
  const rng = seededRng(`bench/${n}/${L}`);
  return Array.from({ length: n }, () => ({
    values: Float32Array.from({ length: L }, () => (rng.uniform() * 2 - 1) * 0.01),
    weight: 1000 + Math.floor(rng.uniform() * 9000),
  }));
}

interface Row extends Record<string, unknown> {
  case: string;
}

/** Mean milliseconds per client of a round's total. */
const perClient = (x: number, m: number): number => x / m;

function runSecAgg(adapter: string, L: number, n: number, graph: SecAggConfig['graph'], dropBeforeMask: number): Row {
  const k = graph?.kind === 'harary' ? graph.k : n - 1;
  const t = Math.floor((k + 1) / 2) + 1;
  const cfg: SecAggConfig = {
    roundId: `bench/${n}/${L}`,
    clients: Array.from({ length: n }, (_, i) => `client-${i}`),
    threshold: t,
    vectorLength: L,
    clipRange: 1,
    maxWeight: 10000,
    ...(graph === undefined ? {} : { graph }),
  };
  const data = vectors(n, L);
  const ms = { r0c: 0, r0s: 0, r1c: 0, r1s: 0, r2c: 0, r2s: 0, r3c: 0, r3s: 0 };
  const up = { r0: 0, r1: 0, r2: 0, r3: 0 };
  const down = { r0: 0, r1: 0, r2: 0 };
  const clock = <T>(key: keyof typeof ms, f: () => T): T => {
    const t0 = performance.now();
    const v = f();
    ms[key] += performance.now() - t0;
    return v;
  };
  const clients = cfg.clients.map((id) => new SecAggClient(id, cfg));
  const server = new SecAggServer(cfg);
  const adv = clients.map((c) => clock('r0c', () => c.advertise()));
  up.r0 = adv.reduce((s, m) => s + bytesOf(m), 0);
  const keys = clock('r0s', () => server.advertise(adv));
  down.r0 = bytesOf(keys) * n;
  const sk = clients.map((c) => clock('r1c', () => c.shareKeys(keys)));
  up.r1 = sk.reduce((s, m) => s + bytesOf(m), 0);
  const fw = clock('r1s', () => server.shareKeys(sk));
  down.r1 = [...fw.values()].reduce((s, m) => s + bytesOf(m), 0);
  const live = clients.slice(dropBeforeMask);
  const masked = live.map((c, i) => clock('r2c', () => c.maskedInput(fw.get(c.id), data[i + dropBeforeMask]!)));
  up.r2 = masked.reduce((s, m) => s + bytesOf(m), 0);
  const req = clock('r2s', () => server.maskedInputs(masked));
  down.r2 = bytesOf(req) * live.length;
  const un = live.map((c) => clock('r3c', () => c.unmask(req)));
  up.r3 = un.reduce((s, m) => s + bytesOf(m), 0);
  const res = clock('r3s', () => server.unmask(un));
  // Plain FedAvg of the same vectors.
  const t0 = performance.now();
  const acc = new FedAvgAccumulator('tokens');
  data
    .slice(dropBeforeMask)
    .forEach((d, i) =>
      acc.add({ clientId: `c${i}`, tensors: new Map([['v', d.values]]), tokens: d.weight, examples: 1 }),
    );
  const plain = acc.result().get('v')!;
  const plainMs = performance.now() - t0;
  let maxErr = 0;
  for (let i = 0; i < L; i++) maxErr = Math.max(maxErr, Math.abs(res.sum[i]! / res.weightSum - plain[i]!));
  const clientMs = ms.r0c / n + ms.r1c / n + ms.r2c / live.length + ms.r3c / live.length;
  const serverMs = ms.r0s + ms.r1s + ms.r2s + ms.r3s;
  return {
    case: `${adapter} n=${n} ${graph?.kind === 'harary' ? `secagg+ k=${graph.k}` : 'secagg'}${dropBeforeMask ? ` drop=${dropBeforeMask}` : ''}`,
    adapter,
    L,
    clients: n,
    threshold: t,
    dropped: dropBeforeMask,
    client_ms_r0: perClient(ms.r0c, n),
    client_ms_r1: perClient(ms.r1c, n),
    client_ms_r2: perClient(ms.r2c, live.length),
    client_ms_r3: perClient(ms.r3c, live.length),
    client_ms: clientMs,
    server_ms_r0: ms.r0s,
    server_ms_r1: ms.r1s,
    server_ms_r2: ms.r2s,
    server_ms_r3: ms.r3s,
    server_ms: serverMs,
    up_kib_per_client: (up.r0 + up.r1 + up.r2 + up.r3) / n / 1024,
    down_kib_per_client: (down.r0 + down.r1 + down.r2) / n / 1024,
    plain_up_kib_per_client: (4 * L + 8) / 1024,
    plain_fedavg_ms: plainMs,
    max_abs_err_vs_fedavg: maxErr,
    error_bound_mean: res.errorBound / res.weightSum,
    machine: machine(),
    provider: 'cpu',
  };
}

export async function main(args: string[]): Promise<void> {
  if (args.includes('--utility')) {
    await (await import('./privacy-utility.js')).utility(args);
    return;
  }
  const ns = (argOf(args, 'clients') ?? '3,10,50').split(',').map(Number);
  const plusK = Number(argOf(args, 'plus-k') ?? 8);
  const rows: Row[] = [];
  runSecAgg('warm-up', 4096, 12, { kind: 'harary', k: 4, seed: 'w' }, 1); // JIT warm-up, not recorded
  runSecAgg('warm-up', 4096, 12, undefined, 0);
  for (const { name, L } of ADAPTERS) {
    for (const n of ns) {
      rows.push(runSecAgg(name, L, n, undefined, 0));
      console.error(`done ${rows.at(-1)!.case}`);
      if (n > plusK + 1) {
        rows.push(runSecAgg(name, L, n, { kind: 'harary', k: plusK, seed: 'bench' }, 0));
        rows.push(runSecAgg(name, L, n, { kind: 'harary', k: plusK, seed: 'bench' }, Math.floor(n / 10)));
        console.error(`done ${rows.at(-1)!.case}`);
      }
    }
  }
  printTable(rows, [
    'case',
    'L',
    'threshold',
    'client_ms_r1',
    'client_ms_r2',
    'client_ms',
    'server_ms_r3',
    'server_ms',
    'plain_fedavg_ms',
    'up_kib_per_client',
    'down_kib_per_client',
    'plain_up_kib_per_client',
  ]);
  console.log(
    `max |secure mean - FedAvg| over all cases: ${Math.max(...rows.map((r) => Number(r['max_abs_err_vs_fedavg']))).toExponential(2)}`,
  );
  console.log(`results: ${writeResults('privacy', rows)}`);
}

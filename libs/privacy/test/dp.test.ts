import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SecAggClient,
  SecAggServer,
  addGaussianNoise,
  clipUpdate,
  effectiveNoiseMultiplier,
  gaussianNoise,
  globalNorm,
  noiseStd,
  seededBytes,
  seededRng,
  topUpStd,
  updateDelta,
} from '../src/index.js';

function tensors(seed: string, scale: number): Map<string, Float32Array> {
  const rng = seededRng(seed);
  const mk = (n: number) => Float32Array.from({ length: n }, () => (rng.uniform() * 2 - 1) * scale);
  return new Map([
    ['layers.6.self_attn.q_proj.lora_A.weight', mk(1536)],
    ['layers.6.self_attn.q_proj.lora_B.weight', mk(1536)],
    ['layers.7.self_attn.v_proj.lora_A.weight', mk(1536)],
    ['layers.7.self_attn.v_proj.lora_B.weight', mk(512)],
  ]);
}

test('DP clipping bounds the global L2 norm of the update delta (all tensors together) by C', () => {
  for (let k = 0; k < 20; k++) {
    const global = tensors(`g${k}`, 0.1);
    const local = tensors(`l${k}`, 0.1 + k);
    const delta = updateDelta(local, global);
    const C = 0.5 + k / 7;
    const { clipped, norm, factor } = clipUpdate(delta, C);
    assert.ok(norm > C);
    const after = globalNorm(clipped);
    assert.ok(after <= C, `norm ${after} > C ${C}`);
    assert.ok(after >= C * (1 - 1e-6), `clipped too much: ${after} vs ${C}`);
    // Direction kept: every element scaled by the same factor.
    const [name, t] = [...delta][0]!;
    assert.ok(Math.abs(clipped.get(name)![5]! - t[5]! * factor) <= 1e-7 * Math.abs(t[5]!) + 1e-12);
  }
  // An update inside the ball is left unchanged.
  const small = tensors('small', 1e-4);
  const { clipped, factor } = clipUpdate(small, 10);
  assert.equal(factor, 1);
  for (const [n, t] of small) assert.deepEqual(clipped.get(n), t);
});

/** Sample mean and standard deviation. */
function moments(x: ArrayLike<number>): { mean: number; std: number } {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]!;
  const mean = s / x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += (x[i]! - mean) ** 2;
  return { mean, std: Math.sqrt(v / (x.length - 1)) };
}

test('Gaussian noise has the configured standard deviation (seeded, 4.5 standard errors)', () => {
  // sigma = 1.1, C = 0.7: server-side std = 0.77. N = 200000 samples: SE(mean) = std/sqrt(N), SE(std) ~ std/sqrt(2N).
  const N = 200000;
  const std = noiseStd({ clipNorm: 0.7, noiseMultiplier: 1.1, mode: 'server' });
  assert.ok(Math.abs(std - 0.77) < 1e-12);
  const m = moments(gaussianNoise(N, std, seededRng('noise-1')));
  assert.ok(Math.abs(m.mean) < (4.5 * std) / Math.sqrt(N), `mean ${m.mean}`);
  assert.ok(Math.abs(m.std - std) < (4.5 * std) / Math.sqrt(2 * N), `std ${m.std} vs ${std}`);
  // Kurtosis check of normality (3 for a Gaussian; SE ~ sqrt(24/N)).
  const z = gaussianNoise(N, 1, seededRng('noise-2'));
  let k4 = 0;
  for (const v of z) k4 += v ** 4;
  assert.ok(Math.abs(k4 / N - 3) < 4.5 * Math.sqrt(96 / N), `fourth moment ${k4 / N}`);
  // Tail: P(|z| > 3) = 0.0026998.
  const tail = z.filter((v) => Math.abs(v) > 3).length / N;
  assert.ok(Math.abs(tail - 0.0026998) < 4.5 * Math.sqrt(0.0027 / N), `tail ${tail}`);
});

test('distributed noise: n clients each adding sigma C / sqrt(n) sum to std sigma C; top-up after dropouts', () => {
  const n = 10;
  const L = 50000;
  const sigma = 1.0;
  const C = 0.5;
  const per = noiseStd({ clipNorm: C, noiseMultiplier: sigma, mode: 'distributed', nExpected: n });
  const sum = new Float64Array(L);
  for (let i = 0; i < n; i++) addGaussianNoise(sum, per, seededRng(`client-${i}`));
  const m = moments(sum);
  assert.ok(Math.abs(m.std - sigma * C) < (4.5 * sigma * C) / Math.sqrt(2 * L), `std ${m.std}`);
  // 7 of 10 survive: effective sigma = sqrt(0.7); the server's top-up restores sigma C.
  assert.ok(Math.abs(effectiveNoiseMultiplier(sigma, 7, n) - Math.sqrt(0.7)) < 1e-12);
  const top = topUpStd({ clipNorm: C, noiseMultiplier: sigma, nExpected: n, survivors: 7 });
  assert.ok(Math.abs(7 * per * per + top * top - (sigma * C) ** 2) < 1e-12);
});

test('DP-FedAvg under secure aggregation: clipped, noised inputs sum to the noisy weighted sum', () => {
  const n = 5;
  const C = 1;
  const sigma = 0.5;
  const L = 1536;
  const maxWeight = 1000;
  const per = noiseStd({ clipNorm: C, noiseMultiplier: sigma, mode: 'distributed', nExpected: n });
  const cfg = {
    roundId: 'dp/1',
    clients: Array.from({ length: n }, (_, i) => `c${i}`),
    threshold: 3,
    vectorLength: L,
    // Room for the noise tails: C + 10 per-client std.
    clipRange: C + 10 * per,
    maxWeight,
  };
  const clients = cfg.clients.map((id) => new SecAggClient(id, cfg, { random: seededBytes(id) }));
  const server = new SecAggServer(cfg);
  const keys = server.advertise(clients.map((c) => c.advertise()));
  const fw = server.shareKeys(clients.map((c) => c.shareKeys(keys)));
  const masked = clients.map((c, i) => {
    const values = Float32Array.from(
      clipUpdate(new Map([['x', tensors(`u${i}`, 0.2).values().next().value!]]), C)
        .clipped.get('x')!
        .subarray(0, L),
    );
    const noise = gaussianNoise(L, per, seededRng(`dpnoise${i}`));
    return c.maskedInput(fw.get(c.id), { values, weight: maxWeight, noise });
  });
  for (const c of clients) assert.equal(c.clamped, 0);
  const req = server.maskedInputs(masked);
  const r = server.unmask(clients.map((c) => c.unmask(req)));
  // With weight = maxWeight the sum is maxWeight * (sum of clipped updates + noise): the noise std of sum / maxWeight.
  const signal = new Float64Array(L);
  for (let i = 0; i < n; i++) {
    const v = clipUpdate(new Map([['x', tensors(`u${i}`, 0.2).values().next().value!]]), C).clipped.get('x')!;
    for (let j = 0; j < L; j++) signal[j]! += v[j]!;
  }
  const resid = Float64Array.from(r.sum, (v, j) => v / maxWeight - signal[j]!);
  const m = moments(resid);
  assert.ok(Math.abs(m.std - sigma * C) < (4.5 * sigma * C) / Math.sqrt(2 * L), `noise std ${m.std} vs ${sigma * C}`);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MessageRejectedError,
  SecAggClient,
  SecAggError,
  SecAggServer,
  addInto,
  decodeSum,
  encodeWeighted,
  expandMask,
  makeEncoding,
  neighbours,
  secAggErrorBound,
  seededBytes,
  type SecAggConfig,
  type SharesForward,
} from '../src/index.js';

function config(n: number, t: number, L: number, extra: Partial<SecAggConfig> = {}): SecAggConfig {
  return {
    roundId: 'job1/round3',
    clients: Array.from({ length: n }, (_, i) => `c${i}`),
    threshold: t,
    vectorLength: L,
    clipRange: 1,
    maxWeight: 10000,
    ...extra,
  };
}

/** Deterministic inputs: values in [-1, 1], integer weights in [1, 10000]. */
function inputs(cfg: SecAggConfig, seed: string): { values: Float32Array; weight: number }[] {
  const rnd = seededBytes(seed);
  return cfg.clients.map(() => {
    const b = rnd(4 * cfg.vectorLength + 4);
    const values = Float32Array.from({ length: cfg.vectorLength }, (_, i) => b.readUInt32LE(4 * i) / 2 ** 31 - 1);
    return { values, weight: 1 + (b.readUInt32LE(4 * cfg.vectorLength) % 10000) };
  });
}

interface Run {
  readonly server: SecAggServer;
  readonly clients: SecAggClient[];
  readonly forwards: Map<string, SharesForward>;
}

/**
 * Runs the protocol in memory. dropBeforeMask: send keys and shares, then nothing (excluded from the sum).
 * dropAfterMask: send the masked input, then never answer the unmasking round (included in the sum).
 */
function run(
  cfg: SecAggConfig,
  data: { values: Float32Array; weight: number }[],
  opts: { dropBeforeMask?: string[]; dropAfterMask?: string[]; seed?: string } = {},
): Run & { result: () => ReturnType<SecAggServer['unmask']> } {
  const clients = cfg.clients.map(
    (id) => new SecAggClient(id, cfg, { random: seededBytes(`${opts.seed ?? 's'}/${id}`) }),
  );
  const server = new SecAggServer(cfg);
  const keys = server.advertise(clients.map((c) => c.advertise()));
  const forwards = server.shareKeys(clients.map((c) => c.shareKeys(keys)));
  const live1 = clients.filter((c) => !opts.dropBeforeMask?.includes(c.id));
  const masked = live1.map((c) => c.maskedInput(forwards.get(c.id), data[cfg.clients.indexOf(c.id)]!));
  return {
    server,
    clients,
    forwards,
    result: () => {
      const req = server.maskedInputs(masked);
      const live2 = live1.filter((c) => !opts.dropAfterMask?.includes(c.id));
      return server.unmask(live2.map((c) => c.unmask(req)));
    },
  };
}

/** Plaintext reference: sum_i w_i x_i in float64 over `ids`. */
function plainSum(cfg: SecAggConfig, data: { values: Float32Array; weight: number }[], ids: string[]) {
  const sum = new Float64Array(cfg.vectorLength);
  let w = 0;
  for (const id of ids) {
    const d = data[cfg.clients.indexOf(id)]!;
    for (let i = 0; i < sum.length; i++) sum[i]! += d.weight * d.values[i]!;
    w += d.weight;
  }
  return { sum, weightSum: w };
}

/** The exact fixed-point sum without masks: what secure aggregation must reproduce bit for bit. */
function fixedPointSum(cfg: SecAggConfig, data: { values: Float32Array; weight: number }[], ids: string[]) {
  const enc = makeEncoding({ clipRange: cfg.clipRange, maxClients: cfg.clients.length, maxWeight: cfg.maxWeight });
  const acc = new Uint32Array(2 * (cfg.vectorLength + 1));
  for (const id of ids) {
    const d = data[cfg.clients.indexOf(id)]!;
    addInto(acc, encodeWeighted(enc, d.values, d.weight).words);
  }
  return decodeSum(enc, acc);
}

function checkAgainstPlain(
  cfg: SecAggConfig,
  data: ReturnType<typeof inputs>,
  r: { sum: Float32Array; weightSum: number; survivors: readonly string[]; errorBound: number },
) {
  const ids = [...r.survivors];
  const ref = plainSum(cfg, data, ids);
  assert.equal(r.weightSum, ref.weightSum);
  const exact = fixedPointSum(cfg, data, ids);
  let maxErr = 0;
  for (let i = 0; i < ref.sum.length; i++) {
    assert.equal(r.sum[i], Math.fround(exact.sum[i]!), `element ${i} differs from the unmasked fixed-point sum`);
    maxErr = Math.max(maxErr, Math.abs(exact.sum[i]! - ref.sum[i]!));
  }
  assert.ok(maxErr <= r.errorBound, `quantisation error ${maxErr} above the bound ${r.errorBound}`);
  // FedAvg mean within bound / weightSum (+ float32 rounding of the result).
  for (let i = 0; i < ref.sum.length; i++) {
    const mean = ref.sum[i]! / ref.weightSum;
    const got = r.sum[i]! / r.weightSum;
    assert.ok(Math.abs(got - mean) <= r.errorBound / ref.weightSum + 1e-7 * Math.abs(mean) + 1e-12);
  }
}

for (const n of [3, 10]) {
  test(`secure sum of ${n} clients equals the plaintext weighted FedAvg within the quantisation bound`, () => {
    const cfg = config(n, Math.floor(n / 2) + 1, 1000);
    const data = inputs(cfg, `data${n}`);
    const { result, server } = run(cfg, data);
    const r = result();
    assert.equal(r.survivors.length, n);
    assert.deepEqual(server.rejected, []);
    checkAgainstPlain(cfg, data, r);
    assert.ok(r.errorBound <= 1e-8, `bound ${r.errorBound}`);
    assert.equal(r.errorBound, secAggErrorBound(cfg) * (n / cfg.clients.length));
    // mean() is the weighted average
    const mean = server.mean();
    assert.ok(Math.abs(mean[0]! - r.sum[0]! / r.weightSum) < 1e-6);
  });
}

test('the encoding cannot overflow: scale bits and the 2^52 bound', () => {
  const enc = makeEncoding({ clipRange: 1, maxClients: 50, maxWeight: 10000 });
  assert.ok(50 * (1 * enc.scale + 1) <= 2 ** 52);
  assert.ok(50 * (1 * enc.scale * 2 + 1) > 2 ** 52, 'scale is the largest power of two that fits');
  assert.throws(
    () => makeEncoding({ clipRange: 1, maxClients: 2 ** 30, maxWeight: 2 ** 23 }),
    /weight sum could overflow/,
  );
  // Every client at +clipRange and at -clipRange with the largest weight: the decoded sum is exact.
  const cfgN = 50;
  const acc = new Uint32Array(2 * 3);
  for (let i = 0; i < cfgN; i++) addInto(acc, encodeWeighted(enc, [1, -1], 10000).words);
  const d = decodeSum(enc, acc);
  assert.deepEqual([...d.sum], [50 * 10000, -50 * 10000]);
  assert.equal(d.weightSum, 500000);
  // Values beyond the clip range are clamped and counted.
  assert.equal(encodeWeighted(enc, [5, -5, 0.5], 10000).clamped, 2);
});

test('dropouts: up to n - t clients may drop (before masking: excluded; after masking: included) and the sum is exact', () => {
  const cfg = config(10, 6, 300);
  const data = inputs(cfg, 'drop');
  const r = run(cfg, data, { dropBeforeMask: ['c1', 'c7'], dropAfterMask: ['c0', 'c9'] }).result();
  assert.deepEqual(r.dropped.toSorted(), ['c1', 'c7']);
  assert.equal(r.survivors.length, 8);
  checkAgainstPlain(cfg, data, r);
  // n - t = 4 dropping after masking alone
  const r2 = run(cfg, data, { dropAfterMask: ['c2', 'c3', 'c4', 'c5'] }).result();
  assert.equal(r2.survivors.length, 10);
  checkAgainstPlain(cfg, data, r2);
  // n - t = 4 dropping before masking
  const r3 = run(cfg, data, { dropBeforeMask: ['c2', 'c3', 'c4', 'c5'] }).result();
  checkAgainstPlain(cfg, data, r3);
});

test('dropouts: more than n - t fails with how many shares were available vs needed', () => {
  const cfg = config(10, 6, 50);
  const data = inputs(cfg, 'drop2');
  const after = run(cfg, data, { dropBeforeMask: ['c1'], dropAfterMask: ['c2', 'c3', 'c4', 'c5'] });
  assert.throws(after.result, (e: unknown) => {
    assert.ok(e instanceof SecAggError);
    assert.match(e.message, /5 of 9 survivors answered, 1 dropped/);
    assert.match(e.message, /self-mask seed of c0: 5 shares available \(from c0, c6, c7, c8, c9\), 6 needed/);
    assert.match(e.message, /mask key of c1: 5 shares available .*6 needed/);
    return true;
  });
  const before = run(cfg, data, { dropBeforeMask: ['c1', 'c2', 'c3', 'c4', 'c5'] });
  assert.throws(before.result, /masked input: 5 valid messages, threshold 6 needed/);
});

/** Pearson chi-square of byte values (256 buckets) of a buffer. */
function chiSquareBytes(b: Uint8Array): number {
  const counts = new Float64Array(256);
  for (const v of b) counts[v]!++; // a byte indexes 256 buckets
  const e = b.length / 256;
  return counts.reduce((s, c) => s + ((c - e) * (c - e)) / e, 0);
}

test('a masked input is statistically indistinguishable from uniform (chi-square on bytes, alpha = 0.001)', () => {
  // Critical value of chi-square with 255 degrees of freedom at alpha = 0.001: 330.52 (scipy.stats.chi2.ppf(0.999, 255)).
  const CRIT = 330.52;
  const cfg = config(3, 2, 8192);
  // Highly structured input: every element the same value, so its encoding is far from uniform.
  const data = cfg.clients.map(() => ({ values: new Float32Array(cfg.vectorLength).fill(0.25), weight: 7 }));
  const clients = cfg.clients.map((id) => new SecAggClient(id, cfg, { random: seededBytes(`uniform/${id}`) }));
  const server = new SecAggServer(cfg);
  const keys = server.advertise(clients.map((c) => c.advertise()));
  const fw = server.shareKeys(clients.map((c) => c.shareKeys(keys)));
  const m = clients[1]!.maskedInput(fw.get('c1'), data[1]!);
  const bytes = Buffer.from(m.masked, 'base64');
  const chi = chiSquareBytes(bytes);
  assert.ok(chi < CRIT, `masked bytes chi-square ${chi.toFixed(1)} >= ${CRIT}`);
  // The test has power: the unmasked encoding is rejected by a wide margin.
  const enc = makeEncoding({ clipRange: 1, maxClients: 3, maxWeight: 10000 });
  const plain = encodeWeighted(enc, data[1]!.values, 7).words;
  assert.ok(chiSquareBytes(new Uint8Array(plain.buffer)) > 100 * CRIT);
  // Also uniform: the 16-bit top halves of each element's high word, in 256 buckets of their top byte.
  const words = new Uint32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const tops = Uint8Array.from({ length: words.length / 2 }, (_, i) => words[2 * i + 1]! >>> 24);
  assert.ok(chiSquareBytes(tops) < CRIT);
  // And the mask stream itself for a fixed seed.
  assert.ok(chiSquareBytes(new Uint8Array(expandMask(Buffer.alloc(32, 9), 'r', 8192).buffer)) < CRIT);
});

test('forged or malformed shares are rejected by the client with a reason', () => {
  const cfg = config(4, 3, 16);
  const data = inputs(cfg, 'forge');
  const mk = () => {
    const clients = cfg.clients.map((id) => new SecAggClient(id, cfg, { random: seededBytes(`f/${id}`) }));
    const server = new SecAggServer(cfg);
    const keys = server.advertise(clients.map((c) => c.advertise()));
    const fw = server.shareKeys(clients.map((c) => c.shareKeys(keys)));
    return { c0: clients[0]!, fw: fw.get('c0')! };
  };
  const reject = (mutate: (f: SharesForward) => void, re: RegExp) => {
    const { c0, fw } = mk();
    const f = structuredClone(fw);
    mutate(f);
    assert.throws(
      () => c0.maskedInput(f, data[0]!),
      (e: unknown) => e instanceof MessageRejectedError && re.test(e.message),
    );
  };
  // Tampered ciphertext.
  reject((f) => {
    const ct = Buffer.from(f.shares[0]!.ct, 'base64');
    ct[3]! ^= 1;
    f.shares[0]!.ct = ct.toString('base64');
  }, /from c1: share failed AES-GCM authentication/);
  // Wrong sender: c1's ciphertext relabelled as c2's and vice versa (AAD names the true sender).
  reject((f) => {
    const [a, b] = [f.shares[0]!, f.shares[1]!];
    [a.from, b.from] = [b.from, a.from];
  }, /share failed AES-GCM authentication \(wrong sender, recipient or round/);
  // Bad length.
  reject((f) => {
    f.shares[0]!.ct = Buffer.from(f.shares[0]!.ct, 'base64').subarray(0, 100).toString('base64');
  }, /ciphertext of 100 bytes, expected 148/);
  // Duplicate.
  reject((f) => f.shares.push({ ...f.shares[0]! }), /duplicate share from c1/);
  // Missing share from a participant.
  reject((f) => f.shares.pop(), /participant neighbour c3 sent no share/);
  // Addressed to someone else.
  reject((f) => (f.to = 'c1'), /forward addressed to c1, not c0/);
  // Not a message at all.
  reject((f) => ((f as { type: string }).type = 'nope'), /malformed: type/);
  // Wrong round.
  reject((f) => (f.roundId = 'job1/round2'), /round id job1\/round2 is not job1\/round3/);
});

test('the server rejects malformed, duplicate and forged messages with reasons', () => {
  const cfg = config(4, 3, 16);
  const data = inputs(cfg, 'srv');
  const clients = cfg.clients.map((id) => new SecAggClient(id, cfg, { random: seededBytes(`srv/${id}`) }));
  const server = new SecAggServer(cfg);
  const adv = clients.map((c) => c.advertise());
  const keys = server.advertise([
    ...adv,
    { ...adv[0]!, cPk: adv[1]!.cPk },
    { type: 'secagg.advertise', sender: 'x' },
    { ...adv[2]!, sender: 'mallory' },
  ]);
  // c0 sent twice: both dropped, so c0 is out of the round; a malformed message and an unknown sender are rejected.
  assert.deepEqual(
    keys.keys.map((k) => k.id),
    ['c1', 'c2', 'c3'],
  );
  assert.deepEqual(
    server.rejected.map((r) => `${r.clientId}: ${r.reason.split(':')[0]}`),
    [
      'c0: duplicate message from c0; both dropped',
      'x: malformed',
      'mallory: sender mallory is not expected in this round',
    ],
  );
  const live = clients.slice(1);
  const sk = live.map((c) => c.shareKeys(keys));
  const badLen = structuredClone(sk[2]!);
  badLen.shares[0]!.ct = 'AAAA';
  // c3's bad ciphertext leaves 2 valid messages for threshold 3: the round fails, naming the counts.
  assert.throws(() => server.shareKeys([sk[0], sk[1], badLen]), /share keys: 2 valid messages, threshold 3 needed/);
  assert.deepEqual(server.rejected.at(-1), {
    round: 'share-keys',
    clientId: 'c3',
    reason: 'ciphertext for c1 is not 148 bytes',
  });
  assert.throws(() => new SecAggServer(cfg).unmask([]), /out of order/);
  // Too few participants for the threshold: the round fails.
  const s2 = new SecAggServer(cfg);
  assert.throws(() => s2.advertise(adv.slice(0, 2)), /advertise keys: 2 valid messages, threshold 3 needed/);
  void data;
});

test('the server detects a forged share in the unmasking round', () => {
  const cfg = config(4, 3, 16);
  const data = inputs(cfg, 'forge2');
  const clients = cfg.clients.map((id) => new SecAggClient(id, cfg, { random: seededBytes(`f2/${id}`) }));
  const server = new SecAggServer(cfg);
  const keys = server.advertise(clients.map((c) => c.advertise()));
  const fw = server.shareKeys(clients.map((c) => c.shareKeys(keys)));
  const masked = clients.map((c) => c.maskedInput(fw.get(c.id), data[cfg.clients.indexOf(c.id)]!));
  const req = server.maskedInputs(masked);
  const un = clients.map((c) => c.unmask(req));
  // Forge c1's share of c0's seed (still a valid field element) and send a share of the wrong length from c3.
  const share = Buffer.from(un[1]!.bShares.find((s) => s.of === 'c0')!.share, 'base64');
  share[65]! ^= 1;
  un[1]!.bShares.find((s) => s.of === 'c0')!.share = share.toString('base64');
  un[3]!.bShares[0]!.share = 'AAAA';
  assert.throws(
    () => server.unmask(un),
    /self-mask seed of c0: reconstruction does not match its commitment \(a share is forged\)/,
  );
  assert.match(server.rejected.at(-1)!.reason, /share of c\d is 3 bytes, expected 66/);
});

test('SecAgg+: k-regular Harary graph neighbours, sum and dropouts', () => {
  const cfg = config(12, 3, 200, { graph: { kind: 'harary', k: 4, seed: 'public-seed' } });
  const nb = neighbours(cfg.clients, cfg.roundId, cfg.graph!);
  for (const [c, set] of nb) {
    assert.equal(set.size, 4, `${c} has ${set.size} neighbours`);
    assert.ok(!set.has(c));
    for (const d of set) assert.ok(nb.get(d)!.has(c), 'symmetric');
  }
  const data = inputs(cfg, 'plus');
  const { result, forwards } = run(cfg, data, { dropBeforeMask: ['c4'], dropAfterMask: ['c8'] });
  // Each client received shares from its 4 neighbours only.
  for (const f of forwards.values()) assert.equal(f.shares.length, 4);
  const r = result();
  assert.equal(r.survivors.length, 11);
  checkAgainstPlain(cfg, data, r);
  assert.throws(() => neighbours(cfg.clients, 'r', { kind: 'harary', k: 3, seed: 's' }), /even integer/);
});

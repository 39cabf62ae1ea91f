import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientsPerRound, sampleClients } from '../src/sampling.js';
import { SamplingError } from '../src/errors.js';

const ids = Array.from({ length: 20 }, (_, i) => `client-${String(i).padStart(2, '0')}`);

test('sampleClients is deterministic per (seed, round), sorted, and independent of the input order', () => {
  const a = sampleClients(ids, { count: 5 }, 42, 3);
  assert.deepEqual(sampleClients(ids, { count: 5 }, 42, 3), a);
  assert.deepEqual(sampleClients(ids.toReversed(), { count: 5 }, 42, 3), a);
  assert.equal(a.length, 5);
  assert.deepEqual(a, a.toSorted());
  assert.equal(new Set(a).size, 5);
  assert.ok(a.every((c) => ids.includes(c)));
});

test('sampleClients differs across rounds and seeds, and covers every client over many rounds', () => {
  const rounds = Array.from({ length: 50 }, (_, r) => sampleClients(ids, { count: 5 }, 7, r).join(','));
  // 50 draws of 5 from 20 (15504 subsets): all-equal or mostly-equal would mean the round is ignored.
  assert.ok(new Set(rounds).size >= 45, `only ${new Set(rounds).size} distinct selections in 50 rounds`);
  assert.notDeepEqual(sampleClients(ids, { count: 5 }, 1, 0), sampleClients(ids, { count: 5 }, 2, 0));
  const seen = new Set(rounds.flatMap((r) => r.split(',')));
  assert.equal(seen.size, 20);
  // Each client is picked with probability 1/4; over 400 rounds the counts stay near 100 (binomial sd ~8.7).
  const counts = new Map<string, number>();
  for (let r = 0; r < 400; r++)
    for (const c of sampleClients(ids, { fraction: 0.25 }, 11, r)) counts.set(c, (counts.get(c) ?? 0) + 1);
  for (const [c, n] of counts) assert.ok(n > 60 && n < 140, `${c} picked ${n} times of 400 (expected ~100)`);
});

test('fraction and count edge cases', () => {
  assert.equal(clientsPerRound(10, {}), 10);
  assert.deepEqual(sampleClients(ids, {}, 0, 0), ids);
  assert.equal(clientsPerRound(10, { fraction: 1 }), 10);
  assert.equal(clientsPerRound(10, { fraction: 0.3 }), 3);
  assert.equal(clientsPerRound(10, { fraction: 0.35 }), 3); // floor
  assert.equal(clientsPerRound(100, { fraction: 0.29 }), 29); // 28.999999999999996 means 29
  assert.equal(clientsPerRound(10, { fraction: 0.01 }), 1); // at least one client
  assert.equal(sampleClients(ids, { fraction: 0.001 }, 5, 9).length, 1);
  assert.equal(clientsPerRound(3, { count: 3 }), 3);
  assert.deepEqual(sampleClients(['b', 'a'], { count: 2 }, 0, 0), ['a', 'b']);
  assert.deepEqual(sampleClients(['only'], { fraction: 0.5 }, 0, 0), ['only']);
});

test('bad values are errors that name the field', () => {
  const bad = (f: () => unknown, re: RegExp) =>
    assert.throws(f, (e: unknown) => e instanceof SamplingError && re.test(e.message));
  bad(() => sampleClients(ids, { fraction: 0 }, 0, 0), /perRound\.fraction: must be in \(0, 1\], got 0/);
  bad(() => sampleClients(ids, { fraction: 1.5 }, 0, 0), /perRound\.fraction/);
  bad(() => sampleClients(ids, { fraction: Number.NaN }, 0, 0), /perRound\.fraction/);
  bad(() => sampleClients(ids, { count: 0 }, 0, 0), /perRound\.count: must be an integer >= 1/);
  bad(() => sampleClients(ids, { count: 2.5 }, 0, 0), /perRound\.count/);
  bad(() => sampleClients(ids, { count: 21 }, 0, 0), /21 clients requested but only 20 exist/);
  bad(() => sampleClients(ids, { count: 2, fraction: 0.5 }, 0, 0), /not both/);
  bad(() => sampleClients([], { count: 1 }, 0, 0), /no clients/);
  bad(() => sampleClients(['a', 'b', 'a'], { count: 1 }, 0, 0), /"a" is listed twice/);
  bad(() => sampleClients(ids, { count: 1 }, 0.5, 0), /seed/);
  bad(() => sampleClients(ids, { count: 1 }, 0, -1), /round/);
});

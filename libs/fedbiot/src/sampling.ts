import { createHash } from 'node:crypto';
import { createRng, shuffled } from '../../data/src/index.js';
import { SamplingError } from './errors.js';

/** How many clients take part in a round: a fraction of all clients or an exact count (not both). Neither: all. */
export interface PerRound {
  /** Fraction in (0, 1]; the count is floor(fraction * n), at least 1 (Flower's `fraction_train` rule). */
  readonly fraction?: number;
  /** Exact number of clients, 1..n. */
  readonly count?: number;
}

/**
 * The clients that train in `round`, a pure function of (client set, perRound, seed, round): the same call gives
 * the same clients on every machine and after a restart, and rounds draw independently. The ids are sorted before
 * shuffling, so the caller's order does not matter; the result is sorted too.
 *
 * @throws SamplingError on an empty or duplicated client list, both or invalid fraction/count, count > n, or a
 *   seed/round that is not a safe integer.
 */
export function sampleClients(clientIds: readonly string[], perRound: PerRound, seed: number, round: number): string[] {
  if (clientIds.length === 0) throw new SamplingError('sampleClients: no clients to sample from');
  const ids = clientIds.toSorted(byCodeUnit);
  for (let i = 1; i < ids.length; i++) {
    if (ids[i] === ids[i - 1]) throw new SamplingError(`sampleClients: client id "${ids[i]}" is listed twice`);
  }
  if (!Number.isSafeInteger(seed)) throw new SamplingError(`sampleClients: seed must be a safe integer, got ${seed}`);
  if (!Number.isSafeInteger(round) || round < 0)
    throw new SamplingError(`sampleClients: round must be an integer >= 0, got ${round}`);
  const k = clientsPerRound(ids.length, perRound);
  if (k === ids.length) return ids;
  return shuffled(ids, createRng(roundSeed(seed, round)))
    .slice(0, k)
    .toSorted(byCodeUnit);
}

/** The number of clients `perRound` selects out of `n`. */
export function clientsPerRound(n: number, perRound: PerRound): number {
  const { fraction, count } = perRound;
  if (fraction !== undefined && count !== undefined) {
    throw new SamplingError(`clients.perRound: give fraction (${fraction}) or count (${count}), not both`);
  }
  if (count !== undefined) {
    if (!Number.isInteger(count) || count < 1)
      throw new SamplingError(`clients.perRound.count: must be an integer >= 1, got ${count}`);
    if (count > n) throw new SamplingError(`clients.perRound.count: ${count} clients requested but only ${n} exist`);
    return count;
  }
  if (fraction !== undefined) {
    if (!(fraction > 0 && fraction <= 1))
      throw new SamplingError(`clients.perRound.fraction: must be in (0, 1], got ${fraction}`);
    // The epsilon absorbs products like 0.29 * 100 = 28.999999999999996 that mean an exact count.
    return Math.max(1, Math.min(n, Math.floor(fraction * n + 1e-9)));
  }
  return n;
}

/** A 48-bit seed for (seed, round): hashing keeps neighbouring seeds and rounds from giving related streams. */
function roundSeed(seed: number, round: number): number {
  return createHash('sha256').update(`fedbiot.sampleClients:${seed}:${round}`).digest().readUIntBE(0, 6);
}

function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

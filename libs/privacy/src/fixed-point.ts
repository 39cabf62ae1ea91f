/**
 * Fixed-point encoding of real vectors into the ring Z_{2^64}, the space secure aggregation masks live in.
 *
 * Each ring element is two little-endian uint32 words (lo, hi) in a Uint32Array of length 2L. A client encodes
 * v = (w / maxWeight) * clamp(x, -clipRange, clipRange) as q = round(v * 2^scaleBits) (two's complement mod 2^64).
 * scaleBits is the largest integer with maxClients * (clipRange * 2^scaleBits + 1) <= 2^52, so the true sum of at
 * most maxClients encoded values has |sum| < 2^52: it never wraps mod 2^64 and is an exact integer in a double.
 * Worst-case error of the decoded sum sum_i w_i x_i per element (values inside the clip range):
 *   maxClients * maxWeight * 0.5 * 2^-scaleBits   (round-to-nearest per client; see errorBound()).
 * The token weight itself travels as one extra ring element holding the exact integer w (needs maxClients *
 * maxWeight <= 2^52), so the weight sum is exact. After it come the optional `stats`: exact non-negative integers
 * (e.g. a clipped flag, a scaled norm) summed unweighted, each at most statBound(enc) = floor(2^52 / maxClients).
 */

export const RING_BITS = 64;
const TWO32 = 2 ** 32;
const SUM_BOUND = 2 ** 52;

export interface EncodingConfig {
  /** Every element of x is clamped to [-clipRange, clipRange] before encoding (with DP clipping at C, use >= C). */
  readonly clipRange: number;
  /** Most clients whose vectors are summed (the configured client count). */
  readonly maxClients: number;
  /** Largest weight (e.g. training tokens) one client may send; weights are integers in [0, maxWeight]. */
  readonly maxWeight: number;
}

export interface Encoding extends EncodingConfig {
  readonly scaleBits: number;
  readonly scale: number;
}

/** Derives the scale and checks that the sum cannot overflow. Throws RangeError for impossible settings. */
export function makeEncoding(cfg: EncodingConfig): Encoding {
  const { clipRange, maxClients, maxWeight } = cfg;
  if (!(clipRange > 0) || !Number.isFinite(clipRange)) throw new RangeError(`clipRange must be > 0, got ${clipRange}`);
  if (!Number.isInteger(maxClients) || maxClients < 1) throw new RangeError(`maxClients must be an integer >= 1`);
  if (!Number.isInteger(maxWeight) || maxWeight < 1) throw new RangeError(`maxWeight must be an integer >= 1`);
  if (maxClients * maxWeight > SUM_BOUND)
    throw new RangeError(
      `maxClients * maxWeight = ${maxClients * maxWeight} exceeds 2^52: the weight sum could overflow`,
    );
  let scaleBits = Math.floor(Math.log2((SUM_BOUND / maxClients - 1) / clipRange));
  while (maxClients * (clipRange * 2 ** scaleBits + 1) > SUM_BOUND) scaleBits--; // log2 rounded up
  if (scaleBits < 8)
    throw new RangeError(`clipRange ${clipRange} with ${maxClients} clients leaves ${scaleBits} fraction bits`);
  const scale = 2 ** scaleBits;
  if (maxClients * (clipRange * scale + 1) > SUM_BOUND) throw new RangeError('internal: overflow check failed');
  return { clipRange, maxClients, maxWeight, scaleBits, scale };
}

/** Worst-case absolute error per element of the decoded weighted sum sum_i w_i x_i for n clients (n <= maxClients). */
export function errorBound(enc: Encoding, n = enc.maxClients): number {
  return (n * enc.maxWeight * 0.5) / enc.scale;
}

/** The largest value one client's stat may take so that the sum of maxClients of them stays below 2^52. */
export function statBound(enc: Pick<Encoding, 'maxClients'>): number {
  return Math.floor(SUM_BOUND / enc.maxClients);
}

/** Writes integer q (|q| < 2^53) at element i as two's complement mod 2^64. */
export function setInt(words: Uint32Array, i: number, q: number): void {
  const lo = q % TWO32;
  words[2 * i] = lo < 0 ? lo + TWO32 : lo;
  const hi = Math.floor(q / TWO32) % TWO32;
  words[2 * i + 1] = hi < 0 ? hi + TWO32 : hi;
}

/** Reads element i as a signed integer; exact when |value| < 2^53 (always true for sums within the encoding). */
export function getInt(words: Uint32Array, i: number): number {
  return (words[2 * i + 1]! | 0) * TWO32 + words[2 * i]!;
}

/**
 * Encodes (weight / maxWeight) * x plus an optional additive term (DP noise, already on the same scale) into
 * L + 1 + S ring elements: L values, the integer weight, then the S `stats` (integers in [0, statBound], not
 * weighted). Returns the words and how many elements were clamped.
 */
export function encodeWeighted(
  enc: Encoding,
  x: ArrayLike<number>,
  weight: number,
  noise?: ArrayLike<number>,
  stats: readonly number[] = [],
): { words: Uint32Array; clamped: number } {
  if (!Number.isInteger(weight) || weight < 0 || weight > enc.maxWeight)
    throw new RangeError(`weight must be an integer in [0, ${enc.maxWeight}], got ${weight}`);
  const most = statBound(enc);
  stats.forEach((v, j) => {
    if (!Number.isInteger(v) || v < 0 || v > most)
      throw new RangeError(`stats[${j}] must be an integer in [0, ${most}], got ${v}`);
  });
  const L = x.length;
  const words = new Uint32Array(2 * (L + 1 + stats.length));
  const f = weight / enc.maxWeight;
  const R = enc.clipRange;
  let clamped = 0;
  for (let i = 0; i < L; i++) {
    let v = x[i]!;
    if (!Number.isFinite(v)) throw new RangeError(`x[${i}] is not finite (${v})`);
    v = f * v + (noise === undefined ? 0 : noise[i]!);
    if (v > R) {
      v = R;
      clamped++;
    } else if (v < -R) {
      v = -R;
      clamped++;
    }
    setInt(words, i, Math.round(v * enc.scale));
  }
  setInt(words, L, weight);
  stats.forEach((v, j) => setInt(words, L + 1 + j, v));
  return { words, clamped };
}

/**
 * Decodes a ring sum of L + 1 + statsLength elements into sum_i w_i x_i (float64), the weight sum and the sums of
 * the stats.
 */
export function decodeSum(
  enc: Encoding,
  words: Uint32Array,
  statsLength = 0,
): { sum: Float64Array; weightSum: number; stats: number[] } {
  const L = words.length / 2 - 1 - statsLength;
  const sum = new Float64Array(L);
  const k = enc.maxWeight / enc.scale;
  for (let i = 0; i < L; i++) sum[i] = getInt(words, i) * k;
  const stats = Array.from({ length: statsLength }, (_, j) => getInt(words, L + 1 + j));
  return { sum, weightSum: getInt(words, L), stats };
}

/** acc += m (mod 2^64), elementwise. */
export function addInto(acc: Uint32Array, m: Uint32Array): void {
  for (let i = 0; i < acc.length; i += 2) {
    const lo = (acc[i]! + m[i]!) >>> 0;
    const carry = lo < acc[i]! ? 1 : 0;
    acc[i] = lo;
    acc[i + 1] = (acc[i + 1]! + m[i + 1]! + carry) >>> 0;
  }
}

/** acc -= m (mod 2^64), elementwise. */
export function subInto(acc: Uint32Array, m: Uint32Array): void {
  for (let i = 0; i < acc.length; i += 2) {
    const a = acc[i]!;
    const lo = (a - m[i]!) >>> 0;
    const borrow = m[i]! > a ? 1 : 0;
    acc[i] = lo;
    acc[i + 1] = (acc[i + 1]! - m[i + 1]! - borrow) >>> 0;
  }
}

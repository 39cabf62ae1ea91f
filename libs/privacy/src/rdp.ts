/**
 * Rényi-DP accountant for the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, "Rényi Differential
 * Privacy of the Sampled Gaussian Mechanism"): the same computation as Opacus's
 * opacus/accountants/analysis/rdp.py (compute_rdp, get_privacy_spent) and TensorFlow Privacy's compute_rdp,
 * for integer orders (binomial expansion, Mironov et al. 2019 Sec. 3.3) and fractional orders (the two-sided
 * erfc series, Sec. 3.3), summed in log space.
 *
 * Conversion to (eps, delta): 'balle2020' (default, what Opacus's get_privacy_spent does) is Balle et al. 2020,
 * "Hypothesis Testing Interpretations and Rényi Differential Privacy", Prop. 12:
 *   eps = rdp(a) - (log(delta) + log(a)) / (a - 1) + log((a - 1) / a);
 * 'mironov2017' is the classic eps = rdp(a) - log(delta) / (a - 1) (Mironov 2017, Prop. 3; older TF Privacy).
 * The minimum over the orders is reported with the order that attains it.
 */

/** Opacus's RDPAccountant.DEFAULT_ALPHAS: 1.1, 1.2, ..., 10.9, then 12, 13, ..., 63. */
export const DEFAULT_ORDERS: readonly number[] = [
  ...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10),
  ...Array.from({ length: 52 }, (_, i) => 12 + i),
];

function logAdd(x: number, y: number): number {
  const a = Math.min(x, y);
  const b = Math.max(x, y);
  if (a === -Infinity) return b;
  return Math.log1p(Math.exp(a - b)) + b;
}

function logSub(x: number, y: number): number {
  if (x < y) throw new RangeError('logSub: the result would be negative');
  if (y === -Infinity) return x;
  if (x === y) return -Infinity;
  const e = Math.expm1(x - y);
  if (!Number.isFinite(e)) return x;
  return Math.log(e) + y;
}

const SQRT_PI = Math.sqrt(Math.PI);

/** log(erfc(x)) accurate to ~1e-13 relative for all real x (series for |x| < 2.5, continued fraction beyond). */
export function logErfc(x: number): number {
  if (x >= 2.5) {
    // erfc(x) = exp(-x^2) / sqrt(pi) / K, K = x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))
    let k = x;
    for (let n = 300; n >= 1; n--) k = x + n / 2 / k;
    return -x * x - Math.log(SQRT_PI) - Math.log(k);
  }
  if (x <= -2.5) return Math.log(2 - Math.exp(logErfc(-x)));
  // erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)): positive terms, no cancellation.
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) < 1e-17 * Math.abs(sum)) break;
  }
  const erf = (2 / SQRT_PI) * Math.exp(-x * x) * sum;
  return Math.log1p(-erf);
}

function logAIntAlpha(q: number, sigma: number, alpha: number): number {
  let logA = -Infinity;
  let logBinom = 0; // log C(alpha, 0)
  for (let i = 0; i <= alpha; i++) {
    if (i > 0) logBinom += Math.log(alpha - i + 1) - Math.log(i);
    const logCoef = logBinom + i * Math.log(q) + (alpha - i) * Math.log(1 - q);
    logA = logAdd(logA, logCoef + (i * i - i) / (2 * sigma * sigma));
  }
  return logA;
}

function logAFracAlpha(q: number, sigma: number, alpha: number): number {
  let logA0 = -Infinity;
  let logA1 = -Infinity;
  const z0 = sigma * sigma * Math.log(1 / q - 1) + 0.5;
  let coef = 1; // C(alpha, i), real alpha
  for (let i = 0; ; i++) {
    if (i > 0) coef *= (alpha - i + 1) / i;
    const logCoef = Math.log(Math.abs(coef));
    const j = alpha - i;
    const logT0 = logCoef + i * Math.log(q) + j * Math.log(1 - q);
    const logT1 = logCoef + j * Math.log(q) + i * Math.log(1 - q);
    const logE0 = Math.log(0.5) + logErfc((i - z0) / (Math.SQRT2 * sigma));
    const logE1 = Math.log(0.5) + logErfc((z0 - j) / (Math.SQRT2 * sigma));
    const logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0;
    const logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1;
    if (coef > 0) {
      logA0 = logAdd(logA0, logS0);
      logA1 = logAdd(logA1, logS1);
    } else {
      logA0 = logSub(logA0, logS0);
      logA1 = logSub(logA1, logS1);
    }
    if (Math.max(logS0, logS1) < -30) break;
    if (i > 100000) throw new RangeError('fractional-order RDP series did not converge');
  }
  return logAdd(logA0, logA1);
}

/** RDP of one step of the sampled Gaussian mechanism at order alpha > 1. */
export function rdpSampledGaussian(q: number, sigma: number, alpha: number): number {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`sampling rate must be in [0, 1], got ${q}`);
  if (!(alpha > 1)) throw new RangeError(`order must be > 1, got ${alpha}`);
  if (q === 0) return 0;
  if (sigma === 0) return Infinity;
  if (q === 1) return alpha / (2 * sigma * sigma);
  if (!Number.isFinite(alpha)) return Infinity;
  const logA = Number.isInteger(alpha) ? logAIntAlpha(q, sigma, alpha) : logAFracAlpha(q, sigma, alpha);
  return logA / (alpha - 1);
}

/** RDP after `steps` compositions, per order (Opacus compute_rdp(q=, noise_multiplier=, steps=, orders=)). */
export function computeRdp(
  q: number,
  noiseMultiplier: number,
  steps: number,
  orders: readonly number[] = DEFAULT_ORDERS,
): number[] {
  return orders.map((a) => rdpSampledGaussian(q, noiseMultiplier, a) * steps);
}

export type Conversion = 'balle2020' | 'mironov2017';

/** (eps, best order) from per-order RDP (Opacus get_privacy_spent(orders=, rdp=, delta=)). */
export function getPrivacySpent(
  orders: readonly number[],
  rdp: readonly number[],
  delta: number,
  conversion: Conversion = 'balle2020',
): { epsilon: number; order: number } {
  if (orders.length !== rdp.length) throw new RangeError('orders and rdp differ in length');
  if (!(delta > 0 && delta < 1)) throw new RangeError(`delta must be in (0, 1), got ${delta}`);
  let best = { epsilon: Infinity, order: NaN };
  orders.forEach((a, i) => {
    const r = rdp[i]!;
    const eps =
      conversion === 'balle2020'
        ? r - (Math.log(delta) + Math.log(a)) / (a - 1) + Math.log((a - 1) / a)
        : r - Math.log(delta) / (a - 1);
    if (!Number.isNaN(eps) && eps < best.epsilon) best = { epsilon: eps, order: a };
  });
  return best;
}

/**
 * Accumulates rounds of DP-FedAvg (each round: clients sampled with rate q = clients per round / clients,
 * Gaussian noise multiplier sigma on the sum of clipped updates) and reports client-level (eps, delta).
 * Rounds with different q or sigma (e.g. a lower effective sigma after dropouts) compose by adding RDP.
 */
export class RdpAccountant {
  private readonly total: number[];
  private rounds = 0;

  constructor(readonly orders: readonly number[] = DEFAULT_ORDERS) {
    this.total = orders.map(() => 0);
  }

  /** Records `steps` rounds with sampling rate q and noise multiplier sigma. */
  step(q: number, noiseMultiplier: number, steps = 1): void {
    const r = computeRdp(q, noiseMultiplier, steps, this.orders);
    r.forEach((v, i) => (this.total[i]! += v));
    this.rounds += steps;
  }

  get steps(): number {
    return this.rounds;
  }

  /** The per-order totals, to persist with a checkpoint (JSON-safe except Infinity, stored as null). */
  exportState(): { orders: number[]; rdp: (number | null)[]; steps: number } {
    return {
      orders: [...this.orders],
      rdp: this.total.map((v) => (Number.isFinite(v) ? v : null)),
      steps: this.rounds,
    };
  }

  /** Rebuilds an accountant from exportState(); throws on a state that does not fit. */
  static fromState(state: unknown): RdpAccountant {
    const s = state as { orders?: unknown; rdp?: unknown; steps?: unknown } | null;
    const orders = s?.orders;
    const rdp = s?.rdp;
    if (
      !Array.isArray(orders) ||
      !Array.isArray(rdp) ||
      orders.length !== rdp.length ||
      !orders.every((a) => typeof a === 'number' && a > 1) ||
      !rdp.every((v) => v === null || (typeof v === 'number' && v >= 0)) ||
      typeof s?.steps !== 'number'
    )
      throw new RangeError('accountant state: expected { orders: number[] > 1, rdp: (number >= 0 | null)[], steps }');
    const acc = new RdpAccountant(orders as number[]);
    (rdp as (number | null)[]).forEach((v, i) => (acc.total[i] = v ?? Infinity));
    acc.rounds = s.steps;
    return acc;
  }

  getPrivacySpent(
    delta: number,
    conversion: Conversion = 'balle2020',
  ): { epsilon: number; delta: number; order: number } {
    const { epsilon, order } = getPrivacySpent(this.orders, this.total, delta, conversion);
    return { epsilon, delta, order };
  }

  getEpsilon(delta: number, conversion: Conversion = 'balle2020'): number {
    return this.getPrivacySpent(delta, conversion).epsilon;
  }
}

/**
 * Small-sample statistics for results: mean and 95 % confidence intervals with the t-distribution (seeds are few:
 * 3-10, where the normal 1.96 would claim too much).
 */

/** Two-sided 97.5 % quantiles of Student's t for df = 1..30 (beyond: the normal 1.96 within 0.05). */
const T975 = [
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11,
  2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/** The t quantile for a two-sided 95 % interval with `df` degrees of freedom. */
export function t975(df: number): number {
  if (!Number.isInteger(df) || df < 1) throw new RangeError(`t975: df must be an integer >= 1, got ${df}`);
  if (df <= T975.length) return T975[df - 1]!;
  if (df <= 60) return 2.0;
  return df <= 120 ? 1.98 : 1.96;
}

export interface MeanCi {
  readonly n: number;
  readonly mean: number;
  /** Sample standard deviation (n-1); 0 for n = 1. */
  readonly sd: number;
  /** Half-width of the 95 % t interval; NaN for n < 2 (no interval from one value). */
  readonly half: number;
}

export function meanCi(values: readonly number[]): MeanCi {
  const n = values.length;
  if (n === 0) return { n, mean: NaN, sd: NaN, half: NaN };
  const mean = values.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { n, mean, sd: 0, half: NaN };
  const sd = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
  return { n, mean, sd, half: (t975(n - 1) * sd) / Math.sqrt(n) };
}

/** "12.3 ± 1.4" (or "12.3" without an interval), values scaled by `scale`. */
export function formatCi(c: MeanCi, digits = 1, scale = 1): string {
  if (!Number.isFinite(c.mean)) return '-';
  const m = (c.mean * scale).toFixed(digits);
  return Number.isFinite(c.half) ? `${m} ± ${(c.half * scale).toFixed(digits)}` : m;
}

/** Standard error of a proportion p measured on n items (binomial). */
export function binomialSe(p: number, n: number): number {
  return n > 0 ? Math.sqrt((p * (1 - p)) / n) : NaN;
}

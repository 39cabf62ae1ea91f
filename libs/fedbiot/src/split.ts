import { SplitConfigError } from './errors.js';

/**
 * The FedBiOT / Offsite-tuning model split: which decoder layers are the trainable adapter, which block becomes the
 * compressed emulator, and which layers the emulator keeps (uniform layer dropout, docs/fedbiot-algorithm.md §1.1-1.2).
 * Pure functions of integers; no model is touched here.
 */

/**
 * Python's `round()` on a float: nearest integer, ties to even. The argument is the same IEEE double Python would
 * see (`n * (1 - beta)` is evaluated identically in both languages), so the result matches the reference bit for
 * bit, e.g. 2.5 -> 2, 7.5 -> 8, and 10 * (1 - 0.15) = 8.499999999999998 -> 8.
 */
export function roundHalfEven(x: number): number {
  if (!Number.isFinite(x)) throw new RangeError(`roundHalfEven: ${x} is not finite`);
  const f = Math.floor(x);
  const frac = x - f; // exact for |x| < 2^52
  if (frac > 0.5) return f + 1;
  if (frac < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Indices (0-based, relative to the block) of the layers an `n`-layer block keeps under uniform layer dropout at
 * rate `dropRate` (beta, the fraction removed).
 *
 * m = roundHalfEven(n * (1 - beta)) layers are kept, at floor(i * (n - 1) / (m - 1)) for i = 0..m-1: a uniform
 * stride that keeps the first and the last layer of the block.
 *
 * Differences from the reference `model_drop_layer` (FedBiOT utils.py L133-147), all deliberate:
 * - The floor is taken in exact integer arithmetic. The reference computes `int(i * stride)` in floating point,
 *   which for some sizes lands just below an integer and drops the block's last layer (n=16, beta=0.1: m=14,
 *   13 * (15/13) = 14.999999999999998 -> 14, so layer 15 is never kept). Where the float is not that unlucky, as in
 *   every LLaMA-2-7B configuration of §1.2, both give the same indices.
 * - m = 1 (and m = 0, when n * (1 - beta) < 0.5) keeps exactly one layer, the block's first: the reference
 *   divides by m - 1 = 0 and crashes. The first layer is the i = 0 term of the formula.
 * - m >= n keeps every layer (stride 1); beta = 0 is the no-compression case.
 *
 * @param n number of layers in the block (integer >= 1)
 * @param dropRate beta in [0, 1)
 */
export function keptLayerIndices(n: number, dropRate: number): number[] {
  if (!Number.isInteger(n) || n < 1)
    throw new SplitConfigError('n', `the block needs an integer >= 1 layers, got ${n}`);
  if (!(dropRate >= 0 && dropRate < 1)) throw new SplitConfigError('dropRate', `must be in [0, 1), got ${dropRate}`);
  const m = roundHalfEven(n * (1 - dropRate));
  if (m <= 1) return [0];
  if (m >= n) return Array.from({ length: n }, (_, i) => i);
  const out: number[] = [];
  for (let i = 0; i < m; i++) out.push(Math.floor((i * (n - 1)) / (m - 1)));
  return out;
}

/** Where the adapter sits: `adapterBottom` first layers and `adapterTop` last layers of the model. */
export interface SplitOptions {
  /** Decoder layers in the full model (L). */
  readonly numLayers: number;
  /** Adapter layers at the input side, 0..adapterBottom-1. FedBiOT: 0; Offsite-tuning / FedOT: 2. */
  readonly adapterBottom: number;
  /** Adapter layers at the output side, L-adapterTop..L-1. FedBiOT and Offsite-tuning: 2. */
  readonly adapterTop: number;
  /** Uniform layer-dropout rate of the emulator, in [0, 1). Default in the job spec: 0.2. */
  readonly dropRate: number;
}

/** The split of an L-layer model. All layer numbers are absolute indices into the full model unless stated. */
export interface ModelSplit {
  readonly numLayers: number;
  readonly dropRate: number;
  /** The block the emulator replaces: layers [start, end) of the full model (the "teacher" in alignment). */
  readonly teacher: { readonly start: number; readonly end: number };
  /** Full-model layers the emulator keeps, ascending. */
  readonly emulatorLayers: readonly number[];
  /** emulatorToTeacher[k] = position in the teacher block (0-based, relative to teacher.start) of emulator layer k. */
  readonly emulatorToTeacher: readonly number[];
  /** Bottom adapter layers 0..l-1. */
  readonly adapterBottomLayers: readonly number[];
  /** Top adapter layers r..L-1. */
  readonly adapterTopLayers: readonly number[];
  /** Bottom then top adapter layers: the layers clients train. */
  readonly adapterLayers: readonly number[];
  /** The client model's layers in run order: bottom adapter, emulator, top adapter. */
  readonly clientLayers: readonly number[];
}

/** FedBiOT's adapter: the last 2 layers, nothing at the bottom. */
export const FEDBIOT_ADAPTER = { adapterBottom: 0, adapterTop: 2 } as const;
/** Offsite-tuning / FedOT's adapter: the first 2 and the last 2 layers. */
export const OFFSITE_TUNING_ADAPTER = { adapterBottom: 2, adapterTop: 2 } as const;

/**
 * Splits an L-layer model into bottom adapter [0, l), teacher block [l, r) compressed into the emulator, and top
 * adapter [r, L), with l = adapterBottom and r = L - adapterTop (reference: `emu_l`, `emu_r`). FedBiOT and
 * Offsite-tuning are two configurations of this one function (FEDBIOT_ADAPTER, OFFSITE_TUNING_ADAPTER).
 *
 * @throws SplitConfigError naming the field when a count is not a non-negative integer, the adapter is empty, or
 *   the adapter leaves no layer for the emulator.
 */
export function splitModel(opts: SplitOptions): ModelSplit {
  const { numLayers, adapterBottom, adapterTop, dropRate } = opts;
  if (!Number.isInteger(numLayers) || numLayers < 2) {
    throw new SplitConfigError(
      'numLayers',
      `must be an integer >= 2 (one adapter and one emulator layer at least), got ${numLayers}`,
    );
  }
  if (!Number.isInteger(adapterBottom) || adapterBottom < 0) {
    throw new SplitConfigError('adapterBottom', `must be an integer >= 0, got ${adapterBottom}`);
  }
  if (!Number.isInteger(adapterTop) || adapterTop < 0) {
    throw new SplitConfigError('adapterTop', `must be an integer >= 0, got ${adapterTop}`);
  }
  if (adapterBottom + adapterTop === 0) {
    throw new SplitConfigError(
      'adapterTop',
      'the adapter is empty (adapterBottom + adapterTop = 0); clients would have nothing to train',
    );
  }
  if (adapterBottom + adapterTop >= numLayers) {
    throw new SplitConfigError(
      'adapterTop',
      `adapterBottom (${adapterBottom}) + adapterTop (${adapterTop}) must be below numLayers (${numLayers}) to leave an emulator block`,
    );
  }
  const start = adapterBottom;
  const end = numLayers - adapterTop;
  const emulatorToTeacher = keptLayerIndices(end - start, dropRate);
  const emulatorLayers = emulatorToTeacher.map((k) => start + k);
  const adapterBottomLayers = range(0, start);
  const adapterTopLayers = range(end, numLayers);
  return {
    numLayers,
    dropRate,
    teacher: { start, end },
    emulatorLayers,
    emulatorToTeacher,
    adapterBottomLayers,
    adapterTopLayers,
    adapterLayers: [...adapterBottomLayers, ...adapterTopLayers],
    clientLayers: [...adapterBottomLayers, ...emulatorLayers, ...adapterTopLayers],
  };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

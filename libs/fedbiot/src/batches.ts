/**
 * From tokenized examples (libs/data: lossMask[i] = 1 when token i is a target) to the model's token batches
 * (labels[t] = token t+1, lossMask[t] = whether that next token counts), padded to a fixed [B, T] bucket.
 */
import { mulberry32 } from '../../engine/src/index.js';
import type { TokenizedExample } from '../../data/src/index.js';
import type { TokenBatch } from '../../model/src/index.js';

export function toTokenBatch(
  examples: readonly TokenizedExample[],
  batch: number,
  seq: number,
  padId: number,
): TokenBatch {
  if (examples.length > batch) throw new Error(`toTokenBatch: ${examples.length} examples do not fit batch ${batch}`);
  const inputIds = new Int32Array(batch * seq).fill(padId);
  const labels = new Int32Array(batch * seq).fill(padId);
  const lossMask = new Float32Array(batch * seq);
  examples.forEach((ex, b) => {
    const n = Math.min(ex.inputIds.length, seq);
    for (let t = 0; t < n; t++) {
      inputIds[b * seq + t] = ex.inputIds[t]!;
      if (t + 1 < n) {
        labels[b * seq + t] = ex.inputIds[t + 1]!;
        lossMask[b * seq + t] = ex.lossMask[t + 1] ? 1 : 0;
      }
    }
  });
  return { batch, seq, inputIds, labels, lossMask };
}

/** Cuts a list into consecutive batches of `batch` (the last one may be short). */
export function chunks<T>(items: readonly T[], batch: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += batch) out.push(items.slice(i, i + batch));
  return out;
}

/** A cycling, seeded stream over examples: each pass is a fresh shuffle (the reference's ReIterator). */
export class ExampleStream<T> {
  private order: number[] = [];
  private pos = 0;
  private epoch = 0;

  constructor(
    private readonly items: readonly T[],
    private readonly seed: number,
    state?: { readonly epoch: number; readonly pos: number },
  ) {
    if (items.length === 0) throw new Error('ExampleStream: no examples');
    if (state) {
      this.epoch = state.epoch;
      this.shuffle();
      this.pos = state.pos;
    } else this.shuffle();
  }

  next(n: number): T[] {
    const out: T[] = [];
    while (out.length < n) {
      if (this.pos >= this.order.length) {
        this.epoch++;
        this.shuffle();
      }
      out.push(this.items[this.order[this.pos++]!]!);
    }
    return out;
  }

  /** Where the stream stands, to resume it exactly. */
  get state(): { epoch: number; pos: number } {
    return { epoch: this.epoch, pos: this.pos };
  }

  private shuffle(): void {
    const rand = mulberry32((this.seed * 2654435761 + this.epoch * 40503 + 1) >>> 0);
    this.order = Array.from({ length: this.items.length }, (_, i) => i);
    for (let i = this.order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [this.order[i], this.order[j]] = [this.order[j]!, this.order[i]!];
    }
    this.pos = 0;
  }
}

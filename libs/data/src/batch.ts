import { TokenizationError } from './errors.js';
import type { TextTokenizer, TokenizedExample } from './types.js';

/** A padded batch, row-major [batch, seq]; one example per row, right-padded. */
export interface PackedBatch {
  readonly batch: number;
  readonly seq: number;
  /** Token ids, `padId` after each example's end. */
  readonly inputIds: Int32Array;
  /** 1 where the token is a trained target (see tokenizeExample); labels are NOT shifted here. */
  readonly lossMask: Int32Array;
  /** 1 on real tokens, 0 on padding. */
  readonly attentionMask: Int32Array;
  /** Real (non-padding) tokens in the batch. */
  readonly realTokens: number;
  /** Trained target tokens in the batch (sum of lossMask): the FedAvg weight under `tokens`. */
  readonly lossTokens: number;
}

export interface PackOptions {
  /** Rows B. Fewer examples than B leave whole rows of padding (attentionMask 0). */
  readonly batch: number;
  /** Columns T; every example must fit (tokenizeExample's maxLength <= T). */
  readonly seq: number;
  readonly padId: number;
}

/**
 * Lays out tokenized examples as [B, T] arrays. Examples are never concatenated into one row: that would need a
 * block-diagonal attention mask, which the models' causal masks do not take.
 */
export function packBatch(examples: readonly TokenizedExample[], opts: PackOptions): PackedBatch {
  const { batch, seq, padId } = opts;
  if (!Number.isInteger(batch) || batch < 1)
    throw new RangeError(`packBatch: batch must be a positive integer, got ${batch}`);
  if (!Number.isInteger(seq) || seq < 1) throw new RangeError(`packBatch: seq must be a positive integer, got ${seq}`);
  if (!Number.isInteger(padId) || padId < 0) throw new RangeError(`packBatch: padId must be a token id, got ${padId}`);
  if (examples.length > batch) throw new RangeError(`packBatch: ${examples.length} examples for batch ${batch}`);
  const inputIds = new Int32Array(batch * seq).fill(padId);
  const lossMask = new Int32Array(batch * seq);
  const attentionMask = new Int32Array(batch * seq);
  let realTokens = 0;
  let lossTokens = 0;
  examples.forEach((ex, b) => {
    const n = ex.inputIds.length;
    if (n > seq) throw new RangeError(`packBatch: example ${b} has ${n} tokens, more than seq ${seq}`);
    if (ex.lossMask.length !== n) {
      throw new RangeError(`packBatch: example ${b} has ${n} tokens but ${ex.lossMask.length} loss-mask entries`);
    }
    const row = b * seq;
    // Both arrays hold n entries (checked above).
    for (let t = 0; t < n; t++) {
      const m = ex.lossMask[t]!;
      inputIds[row + t] = ex.inputIds[t]!;
      lossMask[row + t] = m;
      attentionMask[row + t] = 1;
      lossTokens += m;
    }
    realTokens += n;
  });
  return { batch, seq, inputIds, lossMask, attentionMask, realTokens, lossTokens };
}

export interface ChunkOptions {
  /** Tokens per window. */
  readonly seq: number;
  /** Prepend BOS to each document. Default: when the tokenizer has one. */
  readonly addBos?: boolean;
  /** Append EOS to each document. Default: when the tokenizer has one. */
  readonly addEos?: boolean;
  /** Drop a last window shorter than this many tokens. Default 2 (one target). */
  readonly minTokens?: number;
}

/**
 * Public-corpus language-modelling windows: documents as BOS + text + EOS, concatenated into one stream and cut
 * into non-overlapping windows of `seq` tokens, every position but the first trained. Used for the server's
 * alignment data and public-data CE.
 */
export function chunkCorpus(
  texts: readonly string[],
  tokenizer: TextTokenizer,
  opts: ChunkOptions,
): TokenizedExample[] {
  const { seq } = opts;
  if (!Number.isInteger(seq) || seq < 2) throw new RangeError(`chunkCorpus: seq must be an integer >= 2, got ${seq}`);
  const bos =
    (opts.addBos ?? tokenizer.bosTokenId !== undefined) ? idOrThrow(tokenizer.bosTokenId, 'bosTokenId') : undefined;
  const eos =
    (opts.addEos ?? tokenizer.eosTokenId !== undefined) ? idOrThrow(tokenizer.eosTokenId, 'eosTokenId') : undefined;
  const stream: number[] = [];
  for (const text of texts) {
    if (bos !== undefined) stream.push(bos);
    for (const id of tokenizer.encode(text, { addSpecialTokens: false })) stream.push(id);
    if (eos !== undefined) stream.push(eos);
  }
  const minTokens = opts.minTokens ?? 2;
  const out: TokenizedExample[] = [];
  for (let start = 0; start < stream.length; start += seq) {
    const inputIds = stream.slice(start, start + seq);
    if (inputIds.length < minTokens) break;
    const lossMask = inputIds.map((_, i) => (i === 0 ? 0 : 1));
    out.push({ inputIds, lossMask, promptLength: 0, truncatedPromptTokens: 0, truncatedResponseTokens: 0 });
  }
  return out;
}

function idOrThrow(id: number | undefined, name: string): number {
  if (id === undefined) throw new TokenizationError(`chunkCorpus: the tokenizer has no ${name}`);
  return id;
}

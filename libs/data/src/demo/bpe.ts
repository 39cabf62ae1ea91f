import { ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT } from '../templates.js';

/**
 * A small deterministic byte-level BPE trainer that writes Hugging Face `tokenizer.json` files
 * (GPT-2 byte-to-unicode alphabet, so every string round-trips; digits split one by one as in LLaMA, which helps
 * a tiny model with arithmetic). Loadable by @huggingface/tokenizers and the Rust `tokenizers` library.
 */

/** Special tokens and their ids, LLaMA order plus a pad token. */
export const DEMO_SPECIAL_TOKENS = { unk: '<unk>', bos: '<s>', eos: '</s>', pad: '<pad>' } as const;
const SPECIALS = [DEMO_SPECIAL_TOKENS.unk, DEMO_SPECIAL_TOKENS.bos, DEMO_SPECIAL_TOKENS.eos, DEMO_SPECIAL_TOKENS.pad];
export const DEMO_SPECIAL_IDS = { unk: 0, bos: 1, eos: 2, pad: 3 } as const;

/**
 * Chat template of the demo tokenizer (jinja, as in tokenizer_config.json): "### User:" / "### Assistant:" turns,
 * EOS after each assistant turn. The conversation rendered without the last assistant turn but with the
 * generation prompt is a prefix of the full rendering, as templates.ts requires.
 */
export const DEMO_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}" +
  "### Assistant:\n{{ message['content'] }}{{ eos_token }}" +
  "{% elif message['role'] == 'system' %}{{ message['content'] }}\n\n" +
  "{% else %}### User:\n{{ message['content'] }}\n\n{% endif %}{% endfor %}" +
  '{% if add_generation_prompt %}### Assistant:\n{% endif %}';

export interface DemoTokenizerFiles {
  /** tokenizer.json */
  readonly tokenizerJson: Record<string, unknown>;
  /** tokenizer_config.json */
  readonly tokenizerConfig: Record<string, unknown>;
  /** special_tokens_map.json */
  readonly specialTokensMap: Record<string, unknown>;
  /** Merges learned (vocab = 4 specials + 256 bytes + merged symbols). */
  readonly merges: readonly (readonly [string, string])[];
  /** Actual vocabulary size: below the requested size when no pair occurs twice any more. */
  readonly vocabSize: number;
}

export interface DemoTokenizerOptions {
  /** tokenizer_config.json `model_max_length`. Default 512. */
  readonly modelMaxLength?: number;
  /**
   * Prompt-format texts counted `weight` times each, so the words every training example carries get tokens
   * of their own. Default: the two Alpaca prompts and the chat template's turn headers, weight 300.
   */
  readonly formatTexts?: readonly { readonly text: string; readonly weight: number }[];
}

/** The public prompt scaffolding (no task content) the demo tokenizer learns merges for. */
export const DEMO_FORMAT_TEXTS: readonly { readonly text: string; readonly weight: number }[] = [
  ...[ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT].map((t) => ({ text: t.replace(/\{\w+\}/g, ''), weight: 300 })),
  { text: '### User:\n\n\n### Assistant:\n', weight: 300 },
];

/**
 * Trains byte-level BPE on `corpusTexts` plus weighted prompt-format texts (see DemoTokenizerOptions) until the vocabulary has `vocabSize` entries or no pair occurs twice. Deterministic: the most frequent pair wins,
 * ties go to the smaller (left, right) pair in code-unit order.
 */
/** A special token as tokenizer.json's `added_tokens` lists it: matched whole, never split, normalized or stripped. */
export const hfSpecialToken = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

export function buildDemoTokenizer(
  corpusTexts: readonly string[],
  vocabSize: number,
  opts: DemoTokenizerOptions = {},
): DemoTokenizerFiles {
  const base = SPECIALS.length + 256;
  if (!Number.isInteger(vocabSize) || vocabSize < base) {
    throw new RangeError(`buildDemoTokenizer: vocabSize must be an integer >= ${base}, got ${vocabSize}`);
  }
  const counts = new Map<string, number>();
  const weighted = [...corpusTexts.map((text) => ({ text, weight: 1 })), ...(opts.formatTexts ?? DEMO_FORMAT_TEXTS)];
  for (const { text, weight } of weighted) {
    for (const word of preTokenize(text)) counts.set(word, (counts.get(word) ?? 0) + weight);
  }
  const vocab = new Map<string, number>();
  SPECIALS.forEach((t) => vocab.set(t, vocab.size));
  for (const char of BYTE_TO_CHAR) vocab.set(char, vocab.size);
  const merges = trainMerges(counts, vocabSize - vocab.size, vocab);

  const addedTokens = SPECIALS.map((content, id) => hfSpecialToken(id, content));
  const bos = DEMO_SPECIAL_TOKENS.bos;
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Digits', individual_digits: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      ],
    },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [DEMO_SPECIAL_IDS.bos], tokens: [bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: DEMO_SPECIAL_TOKENS.unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      // "a b" strings: byte-level symbols never contain a space, and every tokenizers version reads this form.
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: DEMO_SPECIAL_TOKENS.bos,
    eos_token: DEMO_SPECIAL_TOKENS.eos,
    pad_token: DEMO_SPECIAL_TOKENS.pad,
    unk_token: DEMO_SPECIAL_TOKENS.unk,
    // Cleanup would rewrite " ." to "." on decode and break round trips.
    clean_up_tokenization_spaces: false,
    model_max_length: opts.modelMaxLength ?? 512,
    tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template: DEMO_CHAT_TEMPLATE,
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...rest }) => [String(id), rest])),
  };
  const specialTokensMap = {
    bos_token: DEMO_SPECIAL_TOKENS.bos,
    eos_token: DEMO_SPECIAL_TOKENS.eos,
    pad_token: DEMO_SPECIAL_TOKENS.pad,
    unk_token: DEMO_SPECIAL_TOKENS.unk,
  };
  return { tokenizerJson, tokenizerConfig, specialTokensMap, merges, vocabSize: vocab.size };
}

/** GPT-2's byte -> printable character table (openai/gpt-2 encoder.py `bytes_to_unicode`). */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  let extra = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable.includes(b) ? b : 256 + extra++));
})();

const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const DIGIT_SPLIT = /[^\d]+|\d/gu;
const encoder = new TextEncoder();

/** The pre-tokenizer of the written tokenizer.json (Digits individual, then ByteLevel), as byte-level strings. */
export function preTokenize(text: string): string[] {
  const out: string[] = [];
  for (const piece of text.match(DIGIT_SPLIT) ?? []) {
    for (const word of piece.match(GPT2_SPLIT) ?? []) {
      let s = '';
      for (const byte of encoder.encode(word)) s += BYTE_TO_CHAR[byte];
      out.push(s);
    }
  }
  return out;
}

const key = (a: string, b: string): string => `${a}\u0000${b}`;

interface Word {
  symbols: string[];
  readonly count: number;
}

function trainMerges(counts: Map<string, number>, budget: number, vocab: Map<string, number>): [string, string][] {
  const words: Word[] = [...counts].map(([w, count]) => ({ symbols: Array.from(w), count }));
  const pairs = new Map<string, number>();
  const addPairs = (w: Word, sign: number): void => {
    const s = w.symbols;
    for (let i = 1; i < s.length; i++) {
      const k = key(s[i - 1]!, s[i]!);
      const v = (pairs.get(k) ?? 0) + sign * w.count;
      if (v === 0) pairs.delete(k);
      else pairs.set(k, v);
    }
  };
  for (const w of words) addPairs(w, 1);

  const merges: [string, string][] = [];
  let added = 0;
  while (added < budget) {
    let best: string | undefined;
    let bestCount = 1; // a pair must occur at least twice to be worth a token
    for (const [k, c] of pairs) {
      if (c > bestCount || (c === bestCount && best !== undefined && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best === undefined) break;
    const [a, b] = best.split('\u0000') as [string, string];
    const merged = a + b;
    for (const w of words) {
      const s = w.symbols;
      let has = false;
      for (let i = 0; i + 1 < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue;
      addPairs(w, -1);
      const next: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          next.push(merged);
          i++;
        } else next.push(s[i]!);
      }
      w.symbols = next;
      addPairs(w, 1);
    }
    merges.push([a, b]);
    // Two merge paths can build the same string ("a"+"bc", "ab"+"c"); it gets one id.
    if (!vocab.has(merged)) {
      vocab.set(merged, vocab.size);
      added++;
    }
  }
  return merges;
}

import { buildDemoTokenizer, type DemoTokenizerFiles } from '../src/demo/bpe.js';
import { generatePublicCorpus } from '../src/demo/corpus.js';
import { createHfTokenizer } from '../src/demo/hf-tokenizer.js';
import { createRng } from '../src/rng.js';
import type { Example, TextTokenizer } from '../src/types.js';

/**
 * A character tokenizer whose ids are predictable by hand: id = code point + 10, BOS 1, EOS 2, PAD 0.
 * The specials "<s>"/"</s>" are matched as whole tokens, like added tokens in a real tokenizer.
 */
export const charTokenizer: TextTokenizer = {
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 0,
  encode(text, opts) {
    const ids: number[] = opts?.addSpecialTokens ? [1] : [];
    for (const part of text.split(/(<s>|<\/s>)/)) {
      if (part === '<s>') ids.push(1);
      else if (part === '</s>') ids.push(2);
      else for (const ch of part) ids.push(ch.codePointAt(0)! + 10);
    }
    return ids;
  },
  decode(ids, opts) {
    return ids
      .map((id) =>
        id === 1
          ? opts?.skipSpecialTokens
            ? ''
            : '<s>'
          : id === 2
            ? opts?.skipSpecialTokens
              ? ''
              : '</s>'
            : id === 0
              ? ''
              : String.fromCodePoint(id - 10),
      )
      .join('');
  },
};

/** charTokenizer ids of a string (no specials). */
export function chars(s: string): number[] {
  return Array.from(s, (c) => c.codePointAt(0)! + 10);
}

let cached: { files: DemoTokenizerFiles; tokenizer: TextTokenizer; corpus: string[] } | undefined;

/** The demo tokenizer trained on a 150 kB public corpus (seed 7), built once per test file. */
export function smallDemoTokenizer(): { files: DemoTokenizerFiles; tokenizer: TextTokenizer; corpus: string[] } {
  if (!cached) {
    const corpus = generatePublicCorpus(createRng(7), { targetBytes: 150_000 });
    const files = buildDemoTokenizer(corpus, 768);
    cached = { files, corpus, tokenizer: createHfTokenizer(files.tokenizerJson, files.tokenizerConfig) };
  }
  return cached;
}

export function alpaca(instruction: string, input: string, output: string, line = 1): Example {
  return { format: 'alpaca', instruction, input, output, extra: {}, source: { file: 'mem.jsonl', line } };
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tokenizer } from '@huggingface/tokenizers';
import { buildDemoTokenizer, DEMO_SPECIAL_IDS, preTokenize } from '../src/demo/bpe.js';
import { generateDemoFederation } from '../src/demo/federation.js';
import { formatAlpacaPrompt } from '../src/templates.js';
import { smallDemoTokenizer } from './helpers.js';

/**
 * Reference BPE encoder written from the algorithm, not from tokenizers.js: within each pre-token, repeatedly merge
 * the adjacent pair with the lowest merge rank (leftmost on ties).
 */
function referenceEncode(
  text: string,
  merges: readonly (readonly [string, string])[],
  vocab: Record<string, number>,
): number[] {
  const rank = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
  const ids: number[] = [];
  for (const word of preTokenize(text)) {
    let sym = Array.from(word);
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < sym.length; i++) {
        const r = rank.get(`${sym[i]} ${sym[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      sym = [...sym.slice(0, best), sym[best]! + sym[best + 1]!, ...sym.slice(best + 2)]; // best + 1 < sym.length
    }
    for (const s of sym) {
      const id = vocab[s];
      if (id === undefined) throw new Error(`reference BPE: symbol "${s}" is not in the vocabulary`);
      ids.push(id);
    }
  }
  return ids;
}

test('demo tokenizer loads in @huggingface/tokenizers with the requested vocab and LLaMA-order specials', () => {
  const { files, tokenizer } = smallDemoTokenizer();
  assert.equal(files.vocabSize, 768);
  const tok = new Tokenizer(files.tokenizerJson, files.tokenizerConfig);
  assert.equal(tok.get_vocab().size, 768);
  assert.deepEqual(
    ['<unk>', '<s>', '</s>', '<pad>'].map((t) => tok.token_to_id(t)),
    [DEMO_SPECIAL_IDS.unk, DEMO_SPECIAL_IDS.bos, DEMO_SPECIAL_IDS.eos, DEMO_SPECIAL_IDS.pad],
  );
  assert.deepEqual([tokenizer.bosTokenId, tokenizer.eosTokenId, tokenizer.padTokenId], [1, 2, 3]);
  // The post-processor adds BOS like LLaMA; specials written in text are single tokens.
  assert.equal(tokenizer.encode('hi')[0], 1);
  assert.equal(tokenizer.encode('hi', { addSpecialTokens: false })[0] !== 1, true);
  assert.deepEqual(tokenizer.encode('a</s>', { addSpecialTokens: false }).slice(-1), [2]);
  assert.equal(tokenizer.decode(tokenizer.encode('two apples'), { skipSpecialTokens: true }), 'two apples');
});

test('every demo string round-trips through encode/decode, plus unicode and whitespace edge cases', () => {
  const { tokenizer, corpus } = smallDemoTokenizer();
  const fed = generateDemoFederation({
    seed: 4,
    trainPerClient: 100,
    testPerClient: 20,
    globalTestPerTask: 10,
    corpusBytes: 1000,
  });
  const records = [...fed.clients.flatMap((c) => [...c.train, ...c.test]), ...fed.globalTest];
  const strings = [
    ...records.flatMap((r) => [
      r.instruction,
      r.input,
      r.output,
      formatAlpacaPrompt(r.instruction, r.input) + r.output,
    ]),
    ...corpus.slice(0, 200),
    'naïve café — 日本語 🙂 ½',
    '  leading and trailing  ',
    'tabs\tand\r\nnewlines\n\n\nend',
    "it's 3:45, isn't it?",
  ].filter((s) => s !== '');
  for (const s of strings) {
    const ids = tokenizer.encode(s, { addSpecialTokens: false });
    assert.ok(!ids.includes(DEMO_SPECIAL_IDS.unk), `no <unk> in ${JSON.stringify(s)}`);
    assert.equal(tokenizer.decode(ids), s);
  }
});

test('tokenizers.js applies the merges exactly as a reference BPE encoder; digits are single tokens', () => {
  const { files, tokenizer, corpus } = smallDemoTokenizer();
  const vocab = (files.tokenizerJson.model as { vocab: Record<string, number> }).vocab;
  for (const text of [...corpus.slice(0, 50), formatAlpacaPrompt('Multiply the two numbers.', '7 times 8')]) {
    assert.deepEqual(tokenizer.encode(text, { addSpecialTokens: false }), referenceEncode(text, files.merges, vocab));
  }
  const digits = tokenizer.encode('12345', { addSpecialTokens: false });
  assert.deepEqual(
    digits.map((id) => tokenizer.decode([id])),
    ['1', '2', '3', '4', '5'],
  );
});

test('BPE training is deterministic and compresses the corpus it was trained on', () => {
  const { files, tokenizer, corpus } = smallDemoTokenizer();
  const again = buildDemoTokenizer(corpus, 768);
  assert.equal(JSON.stringify(again.tokenizerJson), JSON.stringify(files.tokenizerJson));
  const sample = corpus.slice(0, 300).join('\n\n');
  const bytesPerToken = Buffer.byteLength(sample) / tokenizer.encode(sample, { addSpecialTokens: false }).length;
  // A byte-level model with no merges gives 1.0; 768 entries on this corpus give about 3 bytes per token.
  assert.ok(bytesPerToken > 2.5, `bytes per token ${bytesPerToken}`);
  // The Alpaca scaffolding words are learned as whole tokens (weighted format texts).
  const prompt = tokenizer.encode(formatAlpacaPrompt('x'), { addSpecialTokens: false });
  assert.ok(prompt.length < 40, `Alpaca prompt without input takes ${prompt.length} tokens`);
  assert.throws(() => buildDemoTokenizer(corpus, 100), /vocabSize must be an integer >= 260/);
});

test('the chat template renders turns with EOS after assistant turns and a generation prompt', () => {
  const { tokenizer } = smallDemoTokenizer();
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello' },
    { role: 'user', content: '2 plus 2?' },
  ];
  assert.equal(
    tokenizer.applyChatTemplate!(messages, { addGenerationPrompt: true }),
    '<s>Be brief.\n\n### User:\nHi\n\n### Assistant:\nHello</s>### User:\n2 plus 2?\n\n### Assistant:\n',
  );
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TokenizerError } from '../src/errors.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { hfSpecialToken } from '../../data/src/index.js';
import { withTmp } from '../../../test/support/tmp.js';

/**
 * A 24-token SentencePiece-style BPE in the layout of LLaMA-2's tokenizer.json: "▁" replaces spaces and is
 * prepended, <s> is added by a TemplateProcessing post-processor, the decoder turns "▁" back into spaces.
 */
const VOCAB: Record<string, number> = {
  '<unk>': 0,
  '<s>': 1,
  '</s>': 2,
  '<|user|>': 3,
  '<|assistant|>': 4,
  '▁': 5,
  h: 6,
  e: 7,
  l: 8,
  o: 9,
  w: 10,
  r: 11,
  d: 12,
  he: 13,
  ll: 14,
  hell: 15,
  hello: 16,
  '▁hello': 17,
  wo: 18,
  rl: 19,
  worl: 20,
  world: 21,
  '▁world': 22,
  '!': 23,
};
const TOKENIZER_JSON = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [
    hfSpecialToken(0, '<unk>'),
    hfSpecialToken(1, '<s>'),
    hfSpecialToken(2, '</s>'),
    hfSpecialToken(3, '<|user|>'),
    hfSpecialToken(4, '<|assistant|>'),
  ],
  normalizer: {
    type: 'Sequence',
    normalizers: [
      { type: 'Prepend', prepend: '▁' },
      { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
    ],
  },
  pre_tokenizer: null,
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<s>', type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
  },
  decoder: {
    type: 'Sequence',
    decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 },
    ],
  },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: '<unk>',
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: true,
    byte_fallback: false,
    ignore_merges: false,
    vocab: VOCAB,
    merges: ['h e', 'l l', 'he ll', 'hell o', '▁ hello', 'w o', 'r l', 'wo rl', 'worl d', '▁ world'],
  },
};
const TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
const TOKENIZER_CONFIG = {
  bos_token: '<s>',
  eos_token: {
    content: '</s>',
    lstrip: false,
    normalized: false,
    rstrip: false,
    single_word: false,
    __type: 'AddedToken',
  },
  unk_token: '<unk>',
  pad_token: null,
  clean_up_tokenization_spaces: false,
  chat_template: TEMPLATE,
};

async function withTokenizerDir(
  config: object | undefined,
  fn: (dir: string) => Promise<void>,
  extra: Record<string, string> = {},
): Promise<void> {
  await withTmp('h5-tok-', async (dir) => {
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(TOKENIZER_JSON));
    if (config !== undefined) await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
    for (const [name, text] of Object.entries(extra)) await writeFile(join(dir, name), text);
    await fn(dir);
  });
}

test('encode applies the BPE merges and the BOS post-processor; decode inverts it', async () => {
  await withTokenizerDir(TOKENIZER_CONFIG, async (dir) => {
    const tok = await loadTokenizer(dir);
    assert.deepEqual(tok.encode('hello world!'), [1, 17, 22, 23]);
    assert.deepEqual(tok.encode('hello world!', { addSpecialTokens: false }), [17, 22, 23]);
    assert.deepEqual(tok.encode('hello xyz', { addSpecialTokens: false }), [17, 5, 0]); // unknown chars fuse into one <unk>
    assert.equal(tok.decode([17, 22, 23]), 'hello world!');
    assert.equal(tok.decode([1, 17, 22, 2], { skipSpecialTokens: true }), 'hello world');
    assert.equal(tok.decode([1, 17, 22, 2]), '<s> hello world</s>');
    assert.equal(tok.decode([]), '');
    assert.equal(tok.bosTokenId, 1);
    assert.equal(tok.eosTokenId, 2);
    assert.equal(tok.padTokenId, 2); // no pad_token: falls back to EOS
    assert.equal(tok.vocabSize, 24);
  });
});

test('chat template renders as transformers would, and its special tokens encode as single ids', async () => {
  await withTokenizerDir(TOKENIZER_CONFIG, async (dir) => {
    const tok = await loadTokenizer(dir);
    const messages = [
      { role: 'user', content: 'hello' },
      { role: 'assistant', content: 'world' },
    ];
    assert.equal(tok.applyChatTemplate(messages), '<s><|user|>\nhello</s>\n<|assistant|>\nworld</s>\n');
    assert.equal(
      tok.applyChatTemplate(messages.slice(0, 1), { addGenerationPrompt: true }),
      '<s><|user|>\nhello</s>\n<|assistant|>\n',
    );
    const ids = tok.encode(tok.applyChatTemplate(messages.slice(0, 1), { addGenerationPrompt: true }), {
      addSpecialTokens: false,
    });
    // Each text piece between special tokens is normalized on its own, so it gets a "▁" prefix (the LLaMA-2
    // "legacy" behaviour); "\n" is not in this vocabulary and becomes <unk>.
    assert.deepEqual(ids, [1, 3, 5, 0, 16, 2, 5, 0, 4, 5, 0]);
    assert.throws(
      () => tok.applyChatTemplate([{ role: 'tool', content: 'x' }]),
      (e: unknown) => e instanceof TokenizerError && /Unknown role: tool/.test(e.message),
    );
  });
});

test('explicit pad_token (AddedToken object form) wins over the EOS fallback; chat_template.jinja wins over the config', async () => {
  await withTokenizerDir(
    { ...TOKENIZER_CONFIG, pad_token: { content: '<unk>', __type: 'AddedToken' } },
    async (dir) => {
      const tok = await loadTokenizer(dir);
      assert.equal(tok.padTokenId, 0);
      assert.equal(tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), '[user] hi|');
    },
    { 'chat_template.jinja': '{% for m in messages %}[{{ m.role }}] {{ m.content }}|{% endfor %}' },
  );
});

test('without tokenizer_config.json: no special ids, no chat template (applyChatTemplate says so)', async () => {
  await withTokenizerDir(undefined, async (dir) => {
    const tok = await loadTokenizer(dir);
    assert.equal(tok.bosTokenId, undefined);
    assert.equal(tok.padTokenId, undefined);
    assert.equal(tok.hasChatTemplate, false);
    assert.deepEqual(tok.encode('hello'), [1, 17]);
    assert.throws(
      () => tok.applyChatTemplate([{ role: 'user', content: 'x' }]),
      (e: unknown) => e instanceof TokenizerError && /no chat_template/.test(e.message),
    );
  });
});

test('a special token missing from the vocabulary is an error naming tokenizer_config.json', async () => {
  await withTokenizerDir({ ...TOKENIZER_CONFIG, bos_token: '<|begin_of_text|>' }, async (dir) => {
    await assert.rejects(
      loadTokenizer(dir),
      (e: unknown) =>
        e instanceof TokenizerError &&
        e.file === join(dir, 'tokenizer_config.json') &&
        /bos_token "<\|begin_of_text\|>"/.test(e.message),
    );
  });
  await assert.rejects(
    loadTokenizer('/nonexistent-tokenizer-dir'),
    (e: unknown) => e instanceof TokenizerError && /tokenizer\.json/.test(e.message),
  );
});

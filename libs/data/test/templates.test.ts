import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkCorpus, packBatch } from '../src/batch.js';
import { TokenizationError } from '../src/errors.js';
import { formatAlpacaPrompt, promptRecord, renderExample, tokenizeExample, tokenizePrompt } from '../src/templates.js';
import type { Example } from '../src/types.js';
import { alpaca, charTokenizer, chars, smallDemoTokenizer } from './helpers.js';

test('Alpaca prompts are the Stanford Alpaca texts, with and without input', () => {
  assert.equal(
    formatAlpacaPrompt('Add the numbers.', '2 and 3'),
    'Below is an instruction that describes a task, paired with an input that provides further context. ' +
      'Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n' +
      '### Input:\n2 and 3\n\n### Response:',
  );
  assert.equal(
    formatAlpacaPrompt('Name a colour.'),
    'Below is an instruction that describes a task. Write a response that appropriately completes the request.' +
      '\n\n### Instruction:\nName a colour.\n\n### Response:',
  );
  // User text with replacement patterns is inserted literally.
  assert.match(formatAlpacaPrompt('Costs $& and $1'), /Costs \$& and \$1/);
});

test('loss mask covers exactly the response tokens and EOS (character tokenizer, ids by hand)', () => {
  const ex = alpaca('Hi', '', '42');
  const prompt = formatAlpacaPrompt('Hi');
  const out = tokenizeExample(ex, charTokenizer, { maxLength: 1000 });
  assert.deepEqual(out.inputIds, [1, ...chars(prompt), ...chars('42'), 2]);
  assert.equal(out.promptLength, 1 + prompt.length);
  assert.deepEqual(out.lossMask, [...Array.from({ length: 1 + prompt.length }, () => 0), 1, 1, 1]);
  assert.equal(out.truncatedPromptTokens, 0);
  assert.equal(out.truncatedResponseTokens, 0);
  assert.deepEqual(tokenizePrompt(ex, charTokenizer), out.inputIds.slice(0, out.promptLength));

  const noSpecials = tokenizeExample(ex, charTokenizer, { maxLength: 1000, addBos: false, addEos: false });
  assert.deepEqual(noSpecials.inputIds, [...chars(prompt), ...chars('42')]);
  assert.equal(
    noSpecials.lossMask.reduce((a, b) => a + b, 0),
    2,
  );
});

test('loss mask with the real demo tokenizer: masked tokens decode to the answer, the rest to the prompt', () => {
  const { tokenizer } = smallDemoTokenizer();
  const ex = alpaca('Ava has 17 shells. Ben gives her 25 more. How many shells does Ava have now?', '', '42');
  const out = tokenizeExample(ex, tokenizer, { maxLength: 256 });
  const response = out.inputIds.filter((_, i) => out.lossMask[i] === 1);
  const prompt = out.inputIds.slice(0, out.promptLength);
  assert.equal(prompt[0], tokenizer.bosTokenId);
  assert.equal(response[response.length - 1], tokenizer.eosTokenId);
  assert.equal(tokenizer.decode(response), '42</s>');
  assert.equal(
    tokenizer.decode(prompt, { skipSpecialTokens: true }),
    formatAlpacaPrompt(ex.format === 'alpaca' ? ex.instruction : ''),
  );
  // Digits are single tokens in the demo tokenizer, so the answer is "4", "2", EOS.
  assert.equal(response.length, 3);
  assert.ok(out.lossMask.slice(0, out.promptLength).every((m) => m === 0));
});

test('chat records: prompt is the generation prompt, the trained part is the assistant turn + EOS, no double EOS', () => {
  const { tokenizer } = smallDemoTokenizer();
  const ex: Example = {
    format: 'chat',
    messages: [
      { role: 'user', content: 'What is 2 plus 3?' },
      { role: 'assistant', content: '5' },
    ],
    extra: {},
    source: { file: 'c.jsonl', line: 4 },
  };
  const { prompt, response } = renderExample(ex, 'auto', tokenizer);
  assert.equal(prompt, '<s>### User:\nWhat is 2 plus 3?\n\n### Assistant:\n');
  assert.equal(response, '5</s>');
  const out = tokenizeExample(ex, tokenizer, { maxLength: 128 });
  assert.equal(out.inputIds.filter((id) => id === tokenizer.bosTokenId).length, 1);
  assert.equal(out.inputIds.filter((id) => id === tokenizer.eosTokenId).length, 1);
  assert.equal(tokenizer.decode(out.inputIds.filter((_, i) => out.lossMask[i] === 1)), '5</s>');
  // An alpaca record can be rendered through the chat template too.
  const viaChat = renderExample(alpaca('Add.', '1 and 2', '3'), 'chat', tokenizer);
  assert.equal(viaChat.prompt, '<s>### User:\nAdd.\n\n1 and 2\n\n### Assistant:\n');
});

test('templates that do not fit the record, or a chat template without a tokenizer, are named errors', () => {
  const chat: Example = {
    format: 'chat',
    messages: [
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'b' },
    ],
    extra: {},
    source: { file: 'x.jsonl', line: 9 },
  };
  assert.throws(
    () => tokenizeExample(chat, charTokenizer, { maxLength: 50 }),
    (e: unknown) => e instanceof TokenizationError && /x\.jsonl:9: .*applyChatTemplate/.test(e.message),
  );
  assert.throws(() => renderExample(chat, 'alpaca'), /x\.jsonl:9: template "alpaca" does not apply to a chat record/);
  assert.throws(
    () => tokenizeExample(alpaca('a', '', 'b'), charTokenizer, { maxLength: 1 }),
    /maxLength must be an integer >= 2/,
  );
});

const pc = (prompt: string, completion: string): Example => ({
  format: 'prompt-completion',
  prompt,
  completion,
  extra: {},
  source: { file: 't', line: 1 },
});

test('truncation: prompt cut from the left (BOS kept), response cut from the right (EOS lost)', () => {
  // Long prompt, short response: response + EOS intact, prompt keeps its end.
  const a = tokenizeExample(pc('abcdefghij', 'XY'), charTokenizer, { maxLength: 8 });
  assert.deepEqual(a.inputIds, [1, ...chars('ghij'), ...chars('XY'), 2]);
  assert.equal(a.truncatedPromptTokens, 6);
  assert.equal(a.truncatedResponseTokens, 0);
  assert.deepEqual(a.lossMask, [0, 0, 0, 0, 0, 1, 1, 1]);
  // Short prompt, long response: prompt intact, response cut, no EOS.
  const b = tokenizeExample(pc('ab', 'UVWXYZ'), charTokenizer, { maxLength: 6 });
  assert.deepEqual(b.inputIds, [1, ...chars('ab'), ...chars('UVW')]);
  assert.equal(b.truncatedResponseTokens, 4);
  // Both long: the prompt keeps ceil(maxLength / 2) tokens (BOS included).
  const c = tokenizeExample(pc('abcdefghij', 'PQRSTUVWXYZ'), charTokenizer, { maxLength: 7 });
  assert.deepEqual(c.inputIds, [1, ...chars('hij'), ...chars('PQR')]);
  assert.equal(c.promptLength, 4);
  assert.equal(c.inputIds.length, 7);
});

test('text examples train every token after the first', () => {
  const ex: Example = { format: 'text', text: 'abc', extra: {}, source: { file: 'c.txt', line: 1 } };
  const out = tokenizeExample(ex, charTokenizer, { maxLength: 10 });
  assert.deepEqual(out.inputIds, [1, ...chars('abc'), 2]);
  assert.deepEqual(out.lossMask, [0, 1, 1, 1, 1]);
  assert.equal(out.promptLength, 1);
});

test('packBatch right-pads into [B, T] with masks and counts', () => {
  const e1 = {
    inputIds: [1, 20, 21],
    lossMask: [0, 0, 1],
    promptLength: 2,
    truncatedPromptTokens: 0,
    truncatedResponseTokens: 0,
  };
  const e2 = {
    inputIds: [1, 30, 31, 32, 2],
    lossMask: [0, 0, 1, 1, 1],
    promptLength: 2,
    truncatedPromptTokens: 0,
    truncatedResponseTokens: 0,
  };
  const b = packBatch([e1, e2], { batch: 3, seq: 5, padId: 0 });
  assert.deepEqual([...b.inputIds], [1, 20, 21, 0, 0, 1, 30, 31, 32, 2, 0, 0, 0, 0, 0]);
  assert.deepEqual([...b.lossMask], [0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual([...b.attentionMask], [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
  assert.equal(b.realTokens, 8);
  assert.equal(b.lossTokens, 4);
  assert.throws(() => packBatch([e2], { batch: 1, seq: 4, padId: 0 }), /example 0 has 5 tokens, more than seq 4/);
  assert.throws(() => packBatch([e1, e2], { batch: 1, seq: 8, padId: 0 }), /2 examples for batch 1/);
});

test('chunkCorpus: BOS + text + EOS per document, one stream, fixed windows, first position untrained', () => {
  const w = chunkCorpus(['ab', 'cde'], charTokenizer, { seq: 4 });
  assert.deepEqual(
    w.map((x) => x.inputIds),
    [
      [1, ...chars('ab'), 2],
      [1, ...chars('cde')],
    ],
  ); // the trailing [2] is shorter than minTokens (2) and dropped
  assert.deepEqual(w[0]?.lossMask, [0, 1, 1, 1]);
});

test('promptRecord: a generation prompt gets exactly the prompt tokens training put before the response', () => {
  const { tokenizer } = smallDemoTokenizer();
  const trained = tokenizeExample(alpaca('Add.', '1 and 2', '3'), tokenizer, { maxLength: 128 });
  const asked = tokenizePrompt(promptRecord('Add.', 'alpaca', { input: '1 and 2' }), tokenizer, { template: 'alpaca' });
  assert.deepEqual(asked, trained.inputIds.slice(0, trained.promptLength));
  const chat = promptRecord([{ role: 'user', content: 'What is 2 plus 3?' }], 'chat');
  assert.equal(renderExample(chat, 'chat', tokenizer).prompt, '<s>### User:\nWhat is 2 plus 3?\n\n### Assistant:\n');
  assert.equal(
    renderExample(promptRecord('Add.', 'chat'), 'chat', tokenizer).prompt,
    '<s>### User:\nAdd.\n\n### Assistant:\n',
  );
  assert.equal(renderExample(promptRecord('2 + 3 =', 'raw'), 'raw').prompt, '2 + 3 =');
  assert.throws(
    () => promptRecord([{ role: 'user', content: 'x' }], 'alpaca', { source: '--chat' }),
    /--chat: a conversation needs the chat template, not "alpaca"/,
  );
});

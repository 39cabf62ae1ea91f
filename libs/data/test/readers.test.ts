import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DatasetError } from '../src/errors.js';
import { parseJsonl, parseText, readDataset, readJsonl } from '../src/readers.js';
import { withTmp } from '../../../test/support/tmp.js';

test('alpaca records: input defaults to "", extra fields and file:line are kept, blank lines skipped', () => {
  const text = [
    '{"instruction":"Add the numbers.","input":"2 and 3","output":"5","category":"add","id":7}',
    '',
    '{"instruction":"Name a colour.","output":"Red","label":null}',
  ].join('\n');
  const [a, b] = parseJsonl(text, 'data/a.jsonl');
  assert.deepEqual(a, {
    format: 'alpaca',
    instruction: 'Add the numbers.',
    input: '2 and 3',
    output: '5',
    extra: { category: 'add', id: 7 },
    source: { file: 'data/a.jsonl', line: 1 },
  });
  assert.ok(b);
  assert.equal(b.format, 'alpaca');
  assert.equal(b.format === 'alpaca' && b.input, '');
  assert.deepEqual(b.extra, { label: null });
  assert.deepEqual(b.source, { file: 'data/a.jsonl', line: 3 });
});

test('prompt/completion and chat records, auto-detected per line in one file (CRLF and BOM tolerated)', () => {
  const text =
    '\ufeff{"prompt":"2+2=","completion":"4","split":"x"}\r\n' +
    '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}\r\n';
  const [pc, chat] = parseJsonl(text, 'm.jsonl');
  assert.deepEqual(pc, {
    format: 'prompt-completion',
    prompt: '2+2=',
    completion: '4',
    extra: { split: 'x' },
    source: { file: 'm.jsonl', line: 1 },
  });
  assert.ok(chat);
  assert.equal(chat.format, 'chat');
  assert.deepEqual(chat.format === 'chat' && chat.messages.map((m) => m.role), ['system', 'user', 'assistant']);
  assert.deepEqual(chat.source, { file: 'm.jsonl', line: 2 });
});

test('a forced format validates every line against that format only', () => {
  const line = '{"instruction":"x","output":"y"}';
  assert.equal(parseJsonl(line, 'f.jsonl', { format: 'alpaca' }).length, 1);
  assert.throws(
    () => parseJsonl(line, 'f.jsonl', { format: 'chat' }),
    (e: unknown) => e instanceof DatasetError && e.message.includes('f.jsonl:1: missing field "messages"'),
  );
  assert.throws(
    () => parseJsonl(line, 'f.jsonl', { format: 'prompt-completion' }),
    (e: unknown) =>
      e instanceof DatasetError && /f\.jsonl:1: missing field "prompt"; missing field "completion"/.test(e.message),
  );
});

test('every malformed line is reported at once as file:line: reason', () => {
  const lines = [
    '{"instruction":"ok","output":"fine"}',
    '{"instruction": "oops", ',
    '{"instruction":"x"}',
    '{"instruction":7,"output":"1"}',
    '{"instruction":"x","output":"   "}',
    '[1,2]',
    '{"foo":1}',
    '{"messages":[{"role":"user","content":"hi"},{"role":"user","content":"there"}]}',
    '{"messages":[{"role":"robot","content":"hi"},{"role":"assistant","content":"yo"}]}',
    '{"prompt":"p","completion":""}',
    '{"prompt":"p","completion":5}',
    '',
    '{"messages":"nope"}',
  ];
  let err: DatasetError | undefined;
  try {
    parseJsonl(lines.join('\n'), 'bad.jsonl');
  } catch (e) {
    err = e as DatasetError;
  }
  assert.ok(err instanceof DatasetError, 'expected a DatasetError');
  assert.deepEqual(
    err.issues.map((i) => i.line),
    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13],
  );
  assert.ok(err.issues.every((i) => i.file === 'bad.jsonl'));
  const expected: [number, RegExp][] = [
    [2, /invalid JSON/],
    [3, /missing field "output"/],
    [4, /field "instruction": expected string, got number 7/],
    [5, /field "output": must not be empty/],
    [6, /expected a JSON object, got array/],
    [7, /unknown record format.*\(got foo\)/],
    [8, /last message must have role "assistant"/],
    [9, /field "messages\[0\]\.role": expected one of .*got string "robot"/],
    [10, /field "completion": must not be empty/],
    [11, /field "completion": expected string, got number 5/],
    [13, /field "messages": expected array/],
  ];
  for (const [line, re] of expected) {
    const issue = err.issues.find((i) => i.line === line);
    assert.match(issue?.reason ?? '', re, `line ${line}`);
    assert.ok(err.message.includes(`bad.jsonl:${line}: `), `message lists line ${line}`);
  }
  assert.match(err.message, /^bad\.jsonl: 11 malformed line\(s\)/);
});

test('the message lists up to the cap and counts the rest; issues keeps them all', () => {
  const text = Array.from({ length: 30 }, () => '{"instruction":"x"}').join('\n');
  assert.throws(
    () => parseJsonl(text, 'many.jsonl', { maxListedIssues: 5 }),
    (e: unknown) => {
      assert.ok(e instanceof DatasetError);
      assert.equal(e.issues.length, 30);
      assert.equal(e.message.split('\n').filter((l) => l.startsWith('  many.jsonl:')).length, 5);
      assert.match(e.message, /\.\.\. and 25 more$/);
      return true;
    },
  );
});

test('an empty JSONL file is an error, not an empty dataset', () => {
  assert.throws(() => parseJsonl('\n\n', 'e.jsonl'), /e\.jsonl: no records/);
});

test('plain text: paragraphs with their first line, one per line, or the whole file', () => {
  const text = '\nFirst paragraph\nstill first.\n\n\nSecond one.\n   \nThird.\n';
  assert.deepEqual(
    parseText(text, 'c.txt').map((d) => [d.text, d.source.line]),
    [
      ['First paragraph\nstill first.', 2],
      ['Second one.', 6],
      ['Third.', 8],
    ],
  );
  assert.deepEqual(
    parseText(text, 'c.txt', { split: 'line' }).map((d) => [d.text, d.source.line]),
    [
      ['First paragraph', 2],
      ['still first.', 3],
      ['Second one.', 6],
      ['Third.', 8],
    ],
  );
  const [whole] = parseText(text, 'c.txt', { split: 'file' });
  assert.ok(whole);
  assert.equal(whole.text, 'First paragraph\nstill first.\n\n\nSecond one.\n   \nThird.');
  assert.equal(whole.source.line, 2);
  assert.throws(() => parseText(' \n', 'empty.txt'), /empty\.txt: no text/);
});

test('files on disk: readJsonl names the path in errors; readDataset dispatches on the extension', async () => {
  await withTmp('data-readers-', async (dir) => {
    const good = join(dir, 'good.jsonl');
    const bad = join(dir, 'bad.jsonl');
    const txt = join(dir, 'corpus.txt');
    await writeFile(good, '{"prompt":"a","completion":"b"}\n');
    await writeFile(bad, '{"prompt":"a","completion":"b"}\n{"prompt":"a"}\n');
    await writeFile(txt, 'one\n\ntwo\n');
    assert.equal((await readJsonl(good)).length, 1);
    await assert.rejects(
      readJsonl(bad),
      (e: unknown) => e instanceof DatasetError && e.message.includes(`${bad}:2: missing field "completion"`),
    );
    assert.deepEqual(
      (await readDataset(txt)).map((e) => e.format === 'text' && e.text),
      ['one', 'two'],
    );
    assert.equal((await readDataset(good))[0]?.format, 'prompt-completion');
    await assert.rejects(readDataset(join(dir, 'x.csv')), /unsupported dataset extension "\.csv"/);
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join, relative } from 'node:path';
import { exactMatch, firstNumber } from '../src/demo/exact-match.js';
import { generateDemoFederation, writeDemoFederation, type DemoManifest } from '../src/demo/federation.js';
import type { DemoRecord } from '../src/demo/tasks.js';
import { numberToWords } from '../src/demo/words.js';
import { labelsOf } from '../src/partition.js';
import { readJsonl, readText } from '../src/readers.js';
import { withTmp } from '../../../test/support/tmp.js';

const SMALL = { trainPerClient: 60, testPerClient: 15, globalTestPerTask: 10, corpusBytes: 30_000, vocabSize: 400 };

/** Recomputes an answer from the numbers written in the problem text, independently of the generator. */
function answerFromText(r: DemoRecord): number {
  const nums = `${r.instruction} ${r.input}`.match(/\d+/g)?.map(Number) ?? [];
  assert.equal(nums.length, 2, `two numbers in: ${r.instruction} ${r.input}`);
  const [x, y] = nums as [number, number]; // two, asserted above
  assert.deepEqual(
    [x, y].toSorted((a, b) => a - b),
    [r.a, r.b].toSorted((a, b) => a - b),
    'operands match the text',
  );
  if (r.category === 'add') return x + y;
  if (r.category === 'sub') return Math.max(x, y) - Math.min(x, y);
  return x * y;
}

const capitalisedWords = (rs: readonly DemoRecord[]): Set<string> =>
  new Set(rs.flatMap((r) => r.instruction.match(/\b[A-Z][a-z]+\b/g) ?? []));

const key = (r: DemoRecord): string => `${r.instruction}\u0000${r.input}`;

test('demo federation: default sizes, every answer recomputed from the problem text', () => {
  const fed = generateDemoFederation({ seed: 5 });
  assert.deepEqual(
    fed.clients.map((c) => [c.id, c.train.length, c.test.length]),
    [
      ['add', 400, 60],
      ['sub', 400, 60],
      ['mul', 400, 60],
    ],
  );
  assert.equal(fed.globalTest.length, 120);
  const all = [...fed.clients.flatMap((c) => [...c.train, ...c.test]), ...fed.globalTest];
  for (const r of all) {
    assert.equal(r.output, String(answerFromText(r)), `${r.category}: ${r.instruction} ${r.input}`);
    assert.match(r.output, /^\d{1,3}$/, 'short numeric answer');
  }
  const corpusBytes = Buffer.byteLength(fed.corpus.join('\n\n') + '\n', 'utf8');
  assert.ok(corpusBytes >= 1_500_000 && corpusBytes < 1_502_000, `corpus ${corpusBytes} bytes`);
});

test('demo federation: splits are disjoint, each client has its own phrasing, names and objects', () => {
  const fed = generateDemoFederation({ seed: 1, ...SMALL });
  const trainKeys = new Set(fed.clients.flatMap((c) => c.train.map(key)));
  for (const c of fed.clients) {
    assert.equal(new Set(c.train.map(key)).size, c.train.length, `${c.id} train has no duplicates`);
    assert.ok(
      c.test.every((r) => !trainKeys.has(key(r))),
      `${c.id} test is disjoint from training data`,
    );
    assert.ok([...c.train, ...c.test].every((r) => r.category === c.id));
  }
  assert.ok(
    fed.globalTest.every((r) => !trainKeys.has(key(r))),
    'global test disjoint from training data',
  );
  // Capitalised words (names, sentence starts) used by each client: the name pools do not overlap.
  const [add, sub, mul] = fed.clients.map((c) => capitalisedWords(c.train));
  assert.ok(add && sub && mul, 'three clients');
  for (const name of ['Ava', 'Ben', 'Emma']) assert.ok(add.has(name) && !sub.has(name) && !mul.has(name), name);
  for (const name of ['Omar', 'Priya']) assert.ok(sub.has(name) && !add.has(name) && !mul.has(name), name);
  for (const name of ['Kenji', 'Lucia']) assert.ok(mul.has(name) && !add.has(name) && !sub.has(name), name);
});

test('public corpus: numbers as digits and words, arithmetic statements, none of the clients\u2019 question formats', () => {
  const fed = generateDemoFederation({ seed: 2, ...SMALL });
  const text = fed.corpus.join('\n\n');
  assert.ok(!text.includes('?'), 'no questions');
  assert.ok(!text.includes('###'), 'no prompt template');
  assert.ok(!/How many|Add the two|Subtract the|Multiply the/.test(text), 'no client phrasings');
  // Arithmetic statements are true: check every "a plus b equals c" / "a minus b equals c" / "a times b is c".
  let checked = 0;
  for (const m of text.matchAll(/(\d+) (plus|minus) (\d+) equals (\d+)|(\d+) times (\d+) is (\d+)/g)) {
    if (m[2] === 'plus') assert.equal(Number(m[1]) + Number(m[3]), Number(m[4]), m[0]);
    else if (m[2] === 'minus') assert.equal(Number(m[1]) - Number(m[3]), Number(m[4]), m[0]);
    else assert.equal(Number(m[5]) * Number(m[6]), Number(m[7]), m[0]);
    checked++;
  }
  assert.ok(checked > 20, `checked ${checked} statements`);
  assert.match(text, /[A-Z][a-z-]+ is written as \d+\./);
});

test('demo options are validated by name', () => {
  assert.throws(
    () => generateDemoFederation({ trainPerClient: 0 }),
    /trainPerClient must be a positive integer, got 0/,
  );
  assert.throws(() => generateDemoFederation({ tasks: ['add', 'add'] }), /tasks must be distinct ids/);
  assert.throws(
    () => generateDemoFederation({ tasks: ['div' as 'add'] }),
    /tasks must be distinct ids among add, sub, mul/,
  );
  const one = generateDemoFederation({
    tasks: ['mul'],
    trainPerClient: 5,
    testPerClient: 2,
    globalTestPerTask: 1,
    corpusBytes: 100,
  });
  assert.deepEqual(
    one.clients.map((c) => c.id),
    ['mul'],
  );
});

test('numberToWords', () => {
  assert.equal(numberToWords(0), 'zero');
  assert.equal(numberToWords(13), 'thirteen');
  assert.equal(numberToWords(42), 'forty-two');
  assert.equal(numberToWords(100), 'one hundred');
  assert.equal(numberToWords(305), 'three hundred five');
  assert.equal(numberToWords(7019), 'seven thousand nineteen');
  assert.throws(() => numberToWords(10_000), RangeError);
});

test('exactMatch: first number of the prediction against the reference', () => {
  const cases: [string, string, boolean][] = [
    ['42', '42', true],
    ['  42\n', '42', true],
    ['The answer is 42.', '42', true],
    ['42 apples, not 41', '42', true],
    ['41', '42', false],
    ['4 2', '42', false],
    ['', '42', false],
    ['no number', '42', false],
    ['-3', '-3', true],
    ['3', '-3', false],
    ['1,250', '1250', true],
    ['12.0', '12', true],
    ['12.5', '12', false],
    ['x42 then 7', '7', true], // a number glued to a word is not a number
    ['Paris.', 'paris', true], // non-numeric references compare as text
  ];
  for (const [pred, ref, want] of cases) assert.equal(exactMatch(pred, ref), want, `${JSON.stringify(pred)} vs ${ref}`);
  assert.equal(firstNumber('a -1,000.5 b'), -1000.5);
  assert.equal(firstNumber('none'), undefined);
});

async function filesUnder(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) {
      const path = join(e.parentPath, e.name);
      out.set(relative(dir, path), await readFile(path));
    }
  }
  return out;
}

test('writeDemoFederation: same seed -> same bytes, another seed -> different; manifest hashes match; files read back', async () => {
  await withTmp('data-demo-', async (root) => {
    const a = join(root, 'a');
    const b = join(root, 'b');
    const c = join(root, 'c');
    const manifest = await writeDemoFederation(a, { seed: 9, ...SMALL });
    await writeDemoFederation(b, { seed: 9, ...SMALL });
    await writeDemoFederation(c, { seed: 10, ...SMALL });
    const [fa, fb, fc] = await Promise.all([filesUnder(a), filesUnder(b), filesUnder(c)]);
    assert.deepEqual([...fa.keys()].toSorted(), [
      'clients/add/test.jsonl',
      'clients/add/train.jsonl',
      'clients/mul/test.jsonl',
      'clients/mul/train.jsonl',
      'clients/sub/test.jsonl',
      'clients/sub/train.jsonl',
      'global/test.jsonl',
      'manifest.json',
      'public/corpus.txt',
      'tokenizer/special_tokens_map.json',
      'tokenizer/tokenizer.json',
      'tokenizer/tokenizer_config.json',
    ]);
    for (const [path, bytes] of fa) assert.ok(bytes.equals(fb.get(path)!), `${path} identical for the same seed`);
    assert.ok(!fa.get('clients/add/train.jsonl')!.equals(fc.get('clients/add/train.jsonl')!), 'other seed differs');
    assert.ok(!fa.get('public/corpus.txt')!.equals(fc.get('public/corpus.txt')!), 'other seed differs (corpus)');

    const onDisk = JSON.parse(fa.get('manifest.json')!.toString('utf8')) as DemoManifest;
    assert.deepEqual(onDisk, JSON.parse(JSON.stringify(manifest)));
    const entries = [
      ...manifest.clients.flatMap((cl) => [cl.train, cl.test]),
      manifest.globalTest,
      manifest.publicCorpus,
      ...manifest.tokenizer.files,
    ];
    for (const e of entries) {
      const bytes = fa.get(e.path)!;
      assert.equal(createHash('sha256').update(bytes).digest('hex'), e.sha256, e.path);
      assert.equal(bytes.length, e.bytes, e.path);
    }
    assert.equal(manifest.tokenizer.vocabSize, 400);

    const train = await readJsonl(join(a, 'clients/sub/train.jsonl'));
    assert.equal(train.length, 60);
    assert.ok(train.every((e) => e.format === 'alpaca'));
    assert.deepEqual(new Set(labelsOf(train, 'category')), new Set(['sub']));
    const global = await readJsonl(join(a, 'global/test.jsonl'));
    assert.deepEqual(new Set(labelsOf(global, 'category')), new Set(['add', 'sub', 'mul']));
    const corpus = await readText(join(a, 'public/corpus.txt'));
    assert.equal(corpus.length, manifest.publicCorpus.count);
  });
});

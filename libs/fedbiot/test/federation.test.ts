/**
 * A data owner's trainer loads only its own client: from a folder that holds the manifest and that client's files
 * and nothing else, it gets exactly the examples (and the stream seed) the full load gives that client. Each service
 * reads only its parts (aggregator: the client list; alignment: the public corpus; evaluator: the test sets), from
 * folders holding nothing more.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SMALL_DEMO_FEDERATION, tmpWithDemoFederation } from '../../../test/support/federation.js';
import { loadTokenizer } from '../../model/src/index.js';
import { clientStreamSeed, loadFederation } from '../src/federation.js';
import { resolveJobSpec } from '../src/job-spec.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const modelDir = join(repoRoot, 'models', 'demo-llama');
let tmp = '';

before(async () => {
  tmp = await tmpWithDemoFederation(
    'fedbiot-federation-',
    { ...SMALL_DEMO_FEDERATION, trainPerClient: 12, testPerClient: 4, corpusBytes: 20_000 },
    'all',
  );
});
after(() => rmSync(tmp, { recursive: true, force: true }));

const specFor = (federation: string) =>
  resolveJobSpec(
    { job: { seed: 3 }, model: { checkpoint: modelDir }, data: { federation, maxLength: 96 } },
    'federation test',
  );

test("onlyClients loads one client's data from a folder that holds nothing else, identical to the full load", async () => {
  const tokenizer = await loadTokenizer(modelDir);
  const full = await loadFederation(specFor(join(tmp, 'all')), tokenizer, tmp);
  assert.deepEqual(
    full.clients.map((c) => c.id),
    ['add', 'sub', 'mul'],
  );

  // The owner of "mul": the manifest and mul's own two files, nothing of the other clients.
  const manifest = JSON.parse(readFileSync(join(tmp, 'all', 'manifest.json'), 'utf8')) as {
    clients: { id: string; train: { path: string }; test: { path: string } }[];
  };
  const owner = join(tmp, 'owner-mul');
  const mine = manifest.clients.find((c) => c.id === 'mul')!;
  for (const rel of ['manifest.json', mine.train.path, mine.test.path]) {
    mkdirSync(dirname(join(owner, rel)), { recursive: true });
    copyFileSync(join(tmp, 'all', rel), join(owner, rel));
  }
  await assert.rejects(
    loadFederation(specFor(owner), tokenizer, tmp),
    /files it names do not exist .*\n  clients\[0\]\.train: .*add\/train\.jsonl\n  clients\[0\]\.test: /,
    'the full load needs the others, and says which files are missing',
  );

  const own = await loadFederation(specFor(owner), tokenizer, tmp, { onlyClients: ['mul'] });
  assert.equal(own.clients.length, 1);
  const fullMul = full.clients.find((c) => c.id === 'mul')!;
  assert.deepEqual(own.clients[0], fullMul, 'same examples, test items and index');
  assert.equal(clientStreamSeed(3, own.clients[0]!), clientStreamSeed(3, fullMul));
  assert.equal(fullMul.index, 2);
  assert.deepEqual(own.global.test, []);
  assert.deepEqual(own.publicWindows, []);

  await assert.rejects(
    loadFederation(specFor(owner), tokenizer, tmp, { onlyClients: ['div'] }),
    /manifest\.json: no client div in "clients"/,
  );
});

test('parts: each service reads only its share, from a folder holding only that share', async () => {
  const tokenizer = await loadTokenizer(modelDir);
  const full = await loadFederation(specFor(join(tmp, 'all')), tokenizer, tmp);
  const manifest = JSON.parse(readFileSync(join(tmp, 'all', 'manifest.json'), 'utf8')) as {
    clients: { id: string; train: { path: string }; test: { path: string } }[];
    globalTest?: { path: string };
    publicCorpus?: { path: string };
  };
  const folder = (name: string, files: readonly string[]): string => {
    const dir = join(tmp, name);
    for (const rel of ['manifest.json', ...files]) {
      mkdirSync(dirname(join(dir, rel)), { recursive: true });
      copyFileSync(join(tmp, 'all', rel), join(dir, rel));
    }
    return dir;
  };
  const ids = full.clients.map((c) => c.id);

  // Aggregator: the manifest alone.
  const agg = await loadFederation(specFor(folder('agg', [])), tokenizer, tmp, { parts: [] });
  assert.deepEqual(
    agg.clients.map((c) => [c.id, c.index, c.train.length, c.test.length]),
    ids.map((id, i) => [id, i, 0, 0]),
  );
  assert.equal(agg.publicWindows.length, 0);

  // Server alignment: the manifest and the public corpus.
  assert.ok(manifest.publicCorpus, 'the demo federation has a public corpus');
  const align = await loadFederation(specFor(folder('align', [manifest.publicCorpus.path])), tokenizer, tmp, {
    parts: ['public'],
  });
  assert.deepEqual(align.publicWindows, full.publicWindows);
  assert.ok(align.clients.every((c) => c.train.length === 0 && c.test.length === 0));

  // Evaluator: the manifest and the test sets.
  const testFiles = [
    ...manifest.clients.map((c) => c.test.path),
    ...(manifest.globalTest ? [manifest.globalTest.path] : []),
  ];
  const ev = await loadFederation(specFor(folder('eval', testFiles)), tokenizer, tmp, { parts: ['test'] });
  assert.deepEqual(
    ev.clients.map((c) => [c.test, c.testItems]),
    full.clients.map((c) => [c.test, c.testItems]),
  );
  assert.deepEqual(ev.global, full.global);
  assert.ok(ev.clients.every((c) => c.train.length === 0));
  assert.equal(ev.publicWindows.length, 0);
});

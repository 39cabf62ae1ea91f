/**
 * data.publicCorpus of the knowledge demo: which public text the server aligns the emulator on. The default keeps
 * the federation folder and its fact-free public corpus; 'pretraining' swaps in the owner's pretraining text and
 * leaves the clients' data as it was.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  generateWorld,
  knowledgeCorpora,
  knowledgePretrainingTexts,
  knowledgePublicQuestions,
  tokenizeExample,
} from '../../data/src/index.js';
import { CausalLM } from '../../model/src/index.js';
import { knowledgeFederationDir } from '../src/demo-model.js';
import { loadFederation, readFederation } from '../src/federation.js';
import { resolveJobSpec } from '../src/job-spec.js';
import { withTmp } from '../../../test/support/tmp.js';
import { repoRoot } from '../../../test/support/paths.js';

const sorted = (a: readonly string[]): string[] => a.toSorted();
const manifest = async (dir: string): Promise<{ options: unknown }> =>
  JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { options: unknown };

test('knowledge demo public corpus: general by default (folder unchanged), the pretraining text with publicCorpus pretraining', async () => {
  await withTmp('kpub-', async (cache) => {
    const general = await knowledgeFederationDir(cache, 0);
    assert.equal(general, join(cache, 'knowledge-federation-v2', 'seed-0'));
    assert.equal(await knowledgeFederationDir(cache, 0, 'general'), general);
    const pre = await knowledgeFederationDir(cache, 0, 'pretraining');
    assert.equal(pre, join(cache, 'knowledge-federation-v2', 'seed-0-public-pretraining'));

    // What the job reads once data.federation names the folder (job.ts withDemoFederation).
    const read = async (dir: string) =>
      readFederation(resolveJobSpec({ data: { federation: dir }, job: { method: 'fedbiot' } }, 'job.yaml'), cache);
    const g = await read(general);
    const p = await read(pre);
    const c = knowledgeCorpora();
    // Default: the general text only, as before the option; no person of the world is named in it.
    assert.deepEqual(g.publicTexts, c.public);
    const names = generateWorld().map((x) => x.name);
    const pubText = g.publicTexts.join('\n');
    assert.ok(names.slice(0, 20).every((n) => !pubText.includes(n)));
    // pretraining: exactly the paragraphs (and order) pretraining used: general text plus every fact and drill.
    assert.deepEqual(p.publicTexts, knowledgePretrainingTexts());
    assert.deepEqual(sorted(p.publicTexts), sorted([...c.public, ...c.knowledge]));
    const preText = p.publicTexts.join('\n');
    const client = generateWorld()[0]!;
    assert.ok(preText.includes(`${client.name} lives in ${client.town}.`), "a client person's fact is in the text");
    // The clients' data is the same bytes either way.
    for (const id of ['town', 'colour', 'trade'])
      for (const part of ['train', 'test'])
        assert.equal(
          await readFile(join(pre, 'clients', id, `${part}.jsonl`), 'utf8'),
          await readFile(join(general, 'clients', id, `${part}.jsonl`), 'utf8'),
        );
    assert.deepEqual((await manifest(general)).options, { seed: 0 });
    assert.deepEqual((await manifest(pre)).options, { seed: 0, publicCorpus: 'pretraining' });
  });
});

test("knowledge demo publicCorpus task: the clients' question forms about drilled people only, aligned on as client examples", async () => {
  await withTmp('kpub-task-', async (cache) => {
    const dir = await knowledgeFederationDir(cache, 0, 'task');
    assert.equal(dir, join(cache, 'knowledge-federation-v2', 'seed-0-public-task'));
    const spec = resolveJobSpec({ data: { federation: dir }, job: { method: 'fedbiot' } }, 'job.yaml');
    const raw = await readFederation(spec, cache);
    assert.deepEqual(raw.publicTexts, []);
    // 120 drilled people x 3 relations x 4 phrasings, none of them a person any client asks or is tested about
    // (the clients' files as written, which keep each record's person).
    assert.equal(raw.publicRecords.length, 120 * 3 * 4);
    const clientRecords: { instruction: string; person: string }[] = [];
    for (const id of ['town', 'colour', 'trade'])
      for (const part of ['train', 'test'])
        for (const line of (await readFile(join(dir, 'clients', id, `${part}.jsonl`), 'utf8')).split('\n'))
          if (line.trim()) clientRecords.push(JSON.parse(line) as { instruction: string; person: string });
    const clientPeople = new Set(clientRecords.map((r) => r.person));
    assert.equal(clientPeople.size, 240);
    const publicQuestions = knowledgePublicQuestions();
    assert.ok(publicQuestions.every((r) => !clientPeople.has(r.person)));
    assert.equal(new Set(publicQuestions.map((r) => r.person)).size, 120);
    // The clients' question forms: every client instruction's phrasing (the name taken out) appears publicly.
    const form = (r: { instruction: string; person: string }): string => r.instruction.replace(r.person, '<name>');
    const publicForms = new Set(publicQuestions.map(form));
    for (const r of clientRecords) assert.ok(publicForms.has(form(r)), r.instruction);
    // Loaded, each record is one alignment window tokenized exactly as a client example (template, maxLength).
    const lm = await CausalLM.load(join(repoRoot, 'models', 'demo-deep'), { cacheRoot: join(cache, 'lm') });
    try {
      const data = await loadFederation(spec, lm.tokenizer!, cache, { parts: ['public'] });
      assert.equal(data.publicWindows.length, raw.publicRecords.length);
      const first = tokenizeExample(raw.publicRecords[0]!, lm.tokenizer!, {
        maxLength: spec.data.maxLength,
        template: spec.data.template,
      });
      assert.deepEqual(data.publicWindows[0], first);
    } finally {
      await lm.release();
    }
  });
});

test('alignment.publicData: a .jsonl of instruction records is read as records, a bad line named by file and line', async () => {
  await withTmp('kpub-jsonl-', async (cache) => {
    const dir = await knowledgeFederationDir(cache, 0);
    const good = join(cache, 'public.jsonl');
    await writeFile(
      good,
      '{"instruction":"Where does Zed live?","output":" Fenwick"}\n{"prompt":"Q","completion":"A"}\n',
    );
    const spec = (file: string) =>
      resolveJobSpec({ data: { federation: dir }, job: { method: 'fedbiot' }, alignment: { publicData: file } }, 'j');
    const raw = await readFederation(spec(good), cache);
    assert.deepEqual(raw.publicTexts, []);
    assert.equal(raw.publicRecords.length, 2);
    const bad = join(cache, 'bad.jsonl');
    await writeFile(bad, '{"instruction":"ok","output":"x"}\nnot json\n');
    await assert.rejects(readFederation(spec(bad), cache), (e: Error) => e.message.includes(`${bad}:2`));
  });
});

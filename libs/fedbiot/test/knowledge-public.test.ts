/**
 * data.publicCorpus of the knowledge demo: which public text the server aligns the emulator on. The default keeps
 * the federation folder and its fact-free public corpus; 'pretraining' swaps in the owner's pretraining text and
 * leaves the clients' data as it was.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateWorld, knowledgeCorpora, knowledgePretrainingTexts } from '../../data/src/index.js';
import { knowledgeFederationDir } from '../src/demo-model.js';
import { readFederation } from '../src/federation.js';
import { resolveJobSpec } from '../src/job-spec.js';
import { withTmp } from '../../../test/support/tmp.js';

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

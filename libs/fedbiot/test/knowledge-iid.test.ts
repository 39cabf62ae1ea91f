/**
 * data.knowledgeClients of the knowledge demo: how its records are dealt to the three clients. The default
 * ('by-relation') keeps the federation folder and its bytes; 'iid' deals the same records so every client holds all
 * three relations, in training and test, with the same totals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  generateKnowledgeFederation,
  KNOWLEDGE_IID_CLIENT_IDS,
  KNOWLEDGE_TASK_IDS,
  type KnowledgeRecord,
} from '../../data/src/index.js';
import { knowledgeFederationDir } from '../src/demo-model.js';
import { readFederation } from '../src/federation.js';
import { resolveJobSpec } from '../src/job-spec.js';
import { withTmp } from '../../../test/support/tmp.js';

const key = (r: KnowledgeRecord): string => JSON.stringify(r);
const sortedKeys = (rs: readonly KnowledgeRecord[]): string[] => rs.map(key).toSorted();

test('knowledge demo clients: by-relation by default (folder and bytes unchanged), iid in its own folder', async () => {
  await withTmp('kiid-', async (cache) => {
    const byRelation = await knowledgeFederationDir(cache, 0);
    assert.equal(byRelation, join(cache, 'knowledge-federation-v2', 'seed-0'));
    assert.equal(await knowledgeFederationDir(cache, 0, 'general', 'by-relation'), byRelation);
    // The manifest names every file's sha256: this pins the default folder's bytes to those of runs made before the
    // option existed (experiments/results/demo-core.md, demo-pubalign.md).
    const manifestText = await readFile(join(byRelation, 'manifest.json'), 'utf8');
    assert.equal(
      createHash('sha256').update(manifestText, 'utf8').digest('hex'),
      '6f92c45684e80e6a8d62fb5993d1d3195343005f81c735bcbb8613df624d5000',
    );
    const iid = await knowledgeFederationDir(cache, 0, 'general', 'iid');
    assert.equal(iid, join(cache, 'knowledge-federation-v2', 'seed-0-clients-iid'));
    assert.equal(
      await knowledgeFederationDir(cache, 0, 'pretraining', 'iid'),
      join(cache, 'knowledge-federation-v2', 'seed-0-public-pretraining-clients-iid'),
    );
    const options = (JSON.parse(await readFile(join(iid, 'manifest.json'), 'utf8')) as { options: unknown }).options;
    assert.deepEqual(options, { seed: 0, clients: 'iid' });

    // What the job reads once data.federation names the folder (job.ts withDemoFederation).
    const read = async (dir: string) =>
      readFederation(resolveJobSpec({ data: { federation: dir }, job: { method: 'fedbiot' } }, 'job.yaml'), cache);
    const b = await read(byRelation);
    const i = await read(iid);
    assert.deepEqual(
      b.clients.map((c) => c.id),
      [...KNOWLEDGE_TASK_IDS],
    );
    assert.deepEqual(
      i.clients.map((c) => c.id),
      [...KNOWLEDGE_IID_CLIENT_IDS],
    );
    assert.deepEqual(i.publicTexts, b.publicTexts, 'the public corpus is the same');
  });
});

test('iid clients hold all three relations in equal shares; the records and totals are the by-relation ones', () => {
  for (const seed of [0, 3]) {
    const b = generateKnowledgeFederation({ seed });
    const i = generateKnowledgeFederation({ seed, clients: 'iid' });
    assert.deepEqual(i.world, b.world);
    for (const part of ['train', 'test'] as const) {
      const all = (f: typeof b): KnowledgeRecord[] => f.clients.flatMap((c) => c[part]);
      assert.equal(all(i).length, all(b).length, `${part}: same total`);
      assert.deepEqual(sortedKeys(all(i)), sortedKeys(all(b)), `${part}: the same records`);
    }
    for (const c of i.clients) {
      for (const part of ['train', 'test'] as const) {
        const per = KNOWLEDGE_TASK_IDS.map((rel) => c[part].filter((r) => r.category === rel).length);
        const total = b.clients[0]![part].length;
        assert.deepEqual(per, [total / 3, total / 3, total / 3], `${c.id} ${part}: ${per.join(', ')} per relation`);
      }
      // A person's training questions about one relation stay on one client, and its test people for a relation
      // are never trained on for that relation anywhere (the by-relation people split).
      for (const rel of KNOWLEDGE_TASK_IDS) {
        const trainedHere = new Set(c.train.filter((r) => r.category === rel).map((r) => r.person));
        for (const other of i.clients.filter((o) => o !== c))
          for (const r of other.train.filter((x) => x.category === rel))
            assert.ok(!trainedHere.has(r.person), `${rel}: ${r.person} trained on two clients`);
        const trainedAnywhere = new Set(b.clients.find((x) => x.id === rel)!.train.map((r) => r.person));
        for (const r of c.test.filter((x) => x.category === rel)) assert.ok(!trainedAnywhere.has(r.person));
      }
    }
    assert.notDeepEqual(
      generateKnowledgeFederation({ seed: seed + 1, clients: 'iid' }).clients[0]!.test,
      i.clients[0]!.test,
      'the deal depends on the seed',
    );
  }
  assert.deepEqual(
    generateKnowledgeFederation({ seed: 2, clients: 'by-relation' }),
    generateKnowledgeFederation({ seed: 2 }),
  );
  assert.throws(
    () => generateKnowledgeFederation({ clients: 'mixed' as never }),
    /clients "mixed" is not one of by-relation, iid/,
  );
});

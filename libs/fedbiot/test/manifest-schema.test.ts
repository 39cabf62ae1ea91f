/**
 * The federation manifest's schema: docs/federation-manifest.schema.json is what the zod schema generates (an editor
 * and the loader must agree), and the manifest the demo generator writes passes it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeDemoFederation } from '../../data/src/index.js';
import { manifestJsonSchema, readManifest } from '../src/federation.js';
import { repoRoot } from '../../../test/support/paths.js';
import { withTmp } from '../../../test/support/tmp.js';

const schemaFile = join(repoRoot, 'docs', 'federation-manifest.schema.json');

test('docs/federation-manifest.schema.json is generated from the zod schema', () => {
  const generated = JSON.stringify(manifestJsonSchema(), null, 2) + '\n';
  // Regenerate after changing manifestSchema: FEDBIOT_UPDATE_SCHEMA=1 node --test dist/libs/fedbiot/test/manifest-schema.test.js
  if (process.env['FEDBIOT_UPDATE_SCHEMA'] === '1') writeFileSync(schemaFile, generated);
  assert.equal(readFileSync(schemaFile, 'utf8'), generated, 'stale schema file; see the comment above to regenerate');
});

test("the demo generator's manifest is valid; file refs may be strings or objects", async () => {
  await withTmp('manifest-schema-', async (dir) => {
    await writeDemoFederation(dir, {
      seed: 1,
      trainPerClient: 2,
      testPerClient: 1,
      globalTestPerTask: 1,
      corpusBytes: 2000,
    });
    const m = await readManifest(join(dir, 'manifest.json'));
    assert.deepEqual(
      m.clients.map((c) => c.id),
      ['add', 'sub', 'mul'],
    );
    const own = join(dir, 'own.json');
    writeFileSync(
      own,
      JSON.stringify({
        clients: [
          { id: 'a', train: 'a.jsonl' },
          { id: 'b', train: { path: 'b.jsonl' }, test: 'bt.jsonl' },
        ],
      }),
    );
    assert.deepEqual((await readManifest(own)).clients[1], { id: 'b', train: { path: 'b.jsonl' }, test: 'bt.jsonl' });
  });
});

test('every problem of a manifest is listed with its field', async () => {
  await withTmp('manifest-schema-', async (dir) => {
    const bad = join(dir, 'manifest.json');
    writeFileSync(
      bad,
      JSON.stringify({
        clients: [
          { id: 'a b', train: 'a.jsonl' },
          { id: 'c', train: ['c.jsonl'] },
          { id: 'c', train: 'd.jsonl', tests: 'x' },
        ],
        globalTest: '',
      }),
    );
    await assert.rejects(readManifest(bad), (e: Error) => {
      assert.equal(e.name, 'FederationError');
      const lines = e.message.split('\n');
      assert.equal(lines[0], `${bad}: invalid federation manifest (4 problems; format: docs/own-data.md):`);
      assert.match(e.message, /\n {2}clients\[0\]\.id: must be 1-64 characters/);
      assert.match(e.message, /\n {2}clients\[1\]\.train: expected a file path .*got \["c\.jsonl"\]/);
      assert.match(e.message, /\n {2}clients\[2\]\.tests: unknown key \(expected one of: id, train, test\)/);
      assert.match(
        e.message,
        /\n {2}globalTest: an empty path; expected a file path relative to the manifest's folder/,
      );
      return true;
    });
    // Refinements run once the shapes are right (zod skips them on an object that already failed).
    writeFileSync(
      bad,
      JSON.stringify({
        clients: [
          { id: 'c', train: 'c.jsonl' },
          { id: 'c', train: 'd.jsonl' },
        ],
      }),
    );
    await assert.rejects(readManifest(bad), /\n {2}clients\[1\]\.id: "c" repeats/);
    writeFileSync(bad, '{"clients": [');
    await assert.rejects(readManifest(bad), new RegExp(`^FederationError: ${bad}: not JSON: `));
    writeFileSync(bad, '{"clients": []}');
    await assert.rejects(readManifest(bad), /clients: must list at least one client/);
  });
});

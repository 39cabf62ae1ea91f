/**
 * Bounded model cache (issue 17): a checkpoint rewritten in place leaves at most two weight versions in its graph
 * folder (GraphStore prunes as it links), pruneModelCache keeps the newest N versions of each weight file and fp32
 * conversion and then evicts least recently used entries down to a size, and `npm run model -- prune-cache` does
 * it from the command line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors } from '../../engine/src/index.js';
import { pruneModelCache } from '../src/cache-prune.js';
import { openCheckpoint } from '../src/checkpoint.js';
import { GraphStore } from '../src/graph-store.js';
import { repoRoot } from '../../../test/support/paths.js';
import { withTmp } from '../../../test/support/tmp.js';

test('a checkpoint rewritten three times keeps only its two newest weight versions in the graph cache', async () => {
  await withTmp('cache-prune-', async (tmp) => {
    const model = join(tmp, 'model');
    cpSync(join(repoRoot, 'models', 'demo-llama'), model, { recursive: true });
    const cacheRoot = join(tmp, 'graphs');
    let dir = '';
    for (let v = 1; v <= 3; v++) {
      // A new version: same bytes, new mtime (what a re-download or an in-place save does to the link name).
      const t = new Date(Date.UTC(2026, 0, v));
      utimesSync(join(model, 'model.safetensors'), t, t);
      const ckpt = await openCheckpoint(model);
      const store = new GraphStore(ckpt, { cacheRoot });
      store.weights().source(ckpt.tensorNames[0]!, 'float32');
      dir = store.dir;
    }
    const links = readdirSync(dir).filter((n) => n.startsWith('w-'));
    assert.equal(links.length, 2, links.join(', '));
  });
});

/** A file of `bytes` with mtime `day` (2026-01-<day>). */
function file(path: string, bytes: number, day: number): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, new Uint8Array(bytes).fill(1));
  const t = new Date(Date.UTC(2026, 0, day));
  utimesSync(path, t, t);
}

test('pruneModelCache keeps the newest N versions per weight file and fp32 source, then evicts LRU to a size', async () => {
  await withTmp('cache-prune-', async (root) => {
    const g = join(root, 'graphs', 'abcd');
    for (let d = 1; d <= 4; d++) file(join(g, `w-${String(d).repeat(12)}-model.safetensors`), 100_000, d);
    file(join(g, 'w-eeeeeeeeeeee-other.safetensors'), 50_000, 1);
    file(join(g, 'train.onnx'), 1000, 5);
    const fp32 = async (id: string, source: string, day: number): Promise<void> => {
      const f = join(root, 'fp32', id, 'model.safetensors');
      mkdirSync(join(root, 'fp32', id), { recursive: true });
      await writeSafetensors(
        f,
        new Map([['w', { dtype: 'F32', shape: [25_000], data: () => new Float32Array(25_000) }]]),
        { format: 'pt', source },
      );
      utimesSync(f, new Date(Date.UTC(2026, 0, day)), new Date(Date.UTC(2026, 0, day)));
    };
    await fp32('f1', '/models/a', 1);
    await fp32('f2', '/models/a', 2);
    await fp32('f3', '/models/b', 3);
    file(join(root, 'data', 'keep-me.jsonl'), 10, 1);

    const dry = pruneModelCache(root, { keepVersions: 1, dryRun: true });
    assert.equal(dry.removed.length, 4);
    assert.equal(readdirSync(g).length, 6, 'a dry run removes nothing');

    const r = pruneModelCache(root, { keepVersions: 2 });
    assert.deepEqual(r.removed.map((e) => e.path.slice(root.length)).toSorted(), [
      '/graphs/abcd/w-111111111111-model.safetensors',
      '/graphs/abcd/w-222222222222-model.safetensors',
    ]);
    assert.ok(r.freedBytes >= 200_000);
    // Now down to 150 kB: the least recently used entries go first (other.safetensors and fp32 f1 of day 1).
    const s = pruneModelCache(root, { maxBytes: r.keptBytes - 150_000 });
    assert.deepEqual(s.removed.map((e) => e.path.slice(root.length)).toSorted(), [
      '/fp32/f1',
      '/graphs/abcd/w-eeeeeeeeeeee-other.safetensors',
    ]);
    assert.ok(s.keptBytes <= r.keptBytes - 150_000);
    assert.deepEqual(readdirSync(join(root, 'data')), ['keep-me.jsonl'], 'other folders are left alone');
    assert.ok(readdirSync(g).includes('train.onnx'));

    const cli = spawnSync(
      process.execPath,
      [join(repoRoot, 'dist', 'bin', 'model.js'), 'prune-cache', '--cache', root, '--max-size', '0'],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /entries, [\d.]+ MiB freed; 0\.0 MiB kept/);
  });
});

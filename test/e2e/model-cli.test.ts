/** The model CLI as users run it: inspect, eval, generate, and clear errors for bad input. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixturesDir, repoRoot } from '../support/paths.js';

const cli = join(repoRoot, 'dist', 'bin', 'model.js');
const run = (...args: string[]) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, FEDBIOT_CACHE: cacheDir } });
const cacheDir = mkdtempSync(join(tmpdir(), 'cli-cache-'));
process.on('exit', () => rmSync(cacheDir, { recursive: true, force: true }));

test('inspect prints the architecture and parameter count', () => {
  const r = run('inspect', '--model', join(fixturesDir, 'qwen2-tiny', 'model'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /model type\s+qwen2/);
  assert.match(r.stdout, /tied embeddings\s+true/);
});

test('eval reports loss and perplexity of the demo model, lower with its own kind of text', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-eval-'));
  try {
    writeFileSync(
      join(dir, 'corpus.txt'),
      'The number 52 is read as fifty-two. 11 is larger than 1, so 1 is smaller than 11.\n\nThere are 17 lamps on the bench.\n',
    );
    writeFileSync(
      join(dir, 'noise.txt'),
      'zq xv jj kk qq zz vv ww xx yy qz zq xk kx jq qj zx xz vq qv.\n\nqq zz xx jj.\n',
    );
    const a = run(
      'eval',
      '--model',
      join(repoRoot, 'models', 'demo-llama'),
      '--data',
      join(dir, 'corpus.txt'),
      '--max-length',
      '32',
    );
    const b = run(
      'eval',
      '--model',
      join(repoRoot, 'models', 'demo-llama'),
      '--data',
      join(dir, 'noise.txt'),
      '--max-length',
      '32',
    );
    assert.equal(a.status, 0, a.stderr);
    const ppl = (s: string): number => Number(s.trim().split('\n').at(-1)!.split('|')[4]);
    assert.ok(ppl(a.stdout) < ppl(b.stdout), `perplexity corpus ${ppl(a.stdout)} vs noise ${ppl(b.stdout)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate continues a prompt with the demo model, deterministically when greedy', () => {
  const args = [
    'generate',
    '--model',
    join(repoRoot, 'models', 'demo-llama'),
    '--prompt',
    'The number 52 is read as',
    '--max-new-tokens',
    '6',
  ];
  const a = run(...args);
  assert.equal(a.status, 0, a.stderr);
  assert.ok(a.stdout.trim().length > 0);
  assert.equal(run(...args).stdout, a.stdout);
});

test('generate on a checkpoint without a tokenizer says so, naming the folder', () => {
  const r = run(
    'generate',
    '--model',
    join(fixturesDir, 'llama-tiny-a', 'model'),
    '--adapter',
    join(fixturesDir, 'llama-tiny-a', 'adapter'),
    '--prompt',
    'x',
    '--max-new-tokens',
    '3',
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llama-tiny-a\/model has no tokenizer\.json/);
});

test('an adapter for another base model is refused with the adapter file named', () => {
  const r = run(
    'generate',
    '--model',
    join(fixturesDir, 'mistral-tiny', 'model'),
    '--adapter',
    join(fixturesDir, 'llama-tiny-a', 'adapter'),
    '--prompt',
    'x',
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /adapter_model\.safetensors/);
  assert.match(r.stderr, /q_proj/);
});

test('a missing model folder is a clear error', () => {
  const r = run('inspect', '--model', '/nonexistent/model');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /\/nonexistent\/model/);
});

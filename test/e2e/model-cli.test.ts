/** The model CLI as users run it: inspect, eval, generate, and clear errors for bad input. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixturesDir, repoRoot } from '../support/paths.js';
import { readModelConfig, initLora, savePeftAdapter } from '../../libs/model/src/index.js';

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
  assert.match(r.stderr, /llama-tiny-a\/model has no tokenizer\.json; give a folder that has one with --tokenizer DIR/);
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

test('package cuts an emulator package that inspect, eval and generate open; bf16 halves the bytes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-pkg-'));
  try {
    const demo = join(repoRoot, 'models', 'demo-llama');
    const f32 = join(dir, 'f32');
    const bf16 = join(dir, 'bf16');
    const p = run('package', '--model', demo, '--out', f32, '--drop-rate', '0.5');
    assert.equal(p.status, 0, p.stderr);
    assert.match(p.stdout, /layers 0,2,5,6,7 of 8 \(dropped 1,3,4\), float32/);
    assert.equal(run('package', '--model', demo, '--out', bf16, '--drop-rate', '0.5', '--dtype', 'bfloat16').status, 0);
    const i = run('inspect', '--model', bf16);
    assert.equal(i.status, 0, i.stderr);
    assert.match(i.stdout, /layers\s+5\n/);
    assert.match(i.stdout, /dropped layers \(not in the package\)\s+1 3 4/);
    assert.match(i.stdout, /package dtype\s+bfloat16/);
    const mib = (s: string): number => Number(/package bytes\s+([\d.]+) MiB/.exec(s)![1]);
    const i32 = run('inspect', '--model', f32);
    assert.ok(mib(i.stdout) < 0.55 * mib(i32.stdout), `${mib(i.stdout)} vs ${mib(i32.stdout)} MiB`);
    writeFileSync(join(dir, 'corpus.txt'), 'The number 52 is read as fifty-two.\n\nThere are 17 lamps on the bench.\n');
    const loss = (model: string): number => {
      const r = run('eval', '--model', model, '--data', join(dir, 'corpus.txt'), '--max-length', '32');
      assert.equal(r.status, 0, r.stderr);
      return Number(r.stdout.trim().split('\n').at(-1)!.split('|')[3]);
    };
    const [l32, l16] = [loss(f32), loss(bf16)];
    assert.ok(Math.abs(l16 - l32) / l32 < 0.01, `bf16 package loss ${l16} vs float32 ${l32}`);
    const g = run('generate', '--model', f32, '--prompt', 'The number 52 is', '--max-new-tokens', '4');
    assert.equal(g.status, 0, g.stderr);
    // A source folder that is not a model is named.
    const bad = run('package', '--model', join(dir, 'missing'), '--out', join(dir, 'x'));
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /config\.json/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every command has its own --help; an unknown option or command is named', () => {
  for (const [cmd, option] of [
    ['generate', '--template T'],
    ['eval', '--data FILE'],
    ['inspect', '--model DIR'],
    ['package', '--drop-rate R'],
  ] as const) {
    const r = run(cmd, '--help');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^usage: npm run model -- ${cmd} `));
    assert.ok(r.stdout.includes(option), `${cmd} --help lists ${option}`);
    assert.doesNotMatch(r.stdout, /see bin\/model\.ts/);
  }
  const overview = run('--help');
  assert.equal(overview.status, 0);
  assert.match(overview.stdout, /generate .*\n.*eval .*\n.*inspect .*\n.*package /);
  const typo = run('generate', '--model', 'x', '--promt', 'hi');
  assert.equal(typo.status, 2);
  assert.match(typo.stderr, /generate: unknown option --promt \(npm run model -- generate --help\)/);
  const none = run('generate', '--model', 'x');
  assert.equal(none.status, 2);
  assert.match(none.stderr, /give --prompt TEXT or --chat JSON/);
  assert.equal(run('train').status, 2);
  assert.match(run('train').stderr, /unknown command "train"/);
});

test('--tokenizer serves a model folder without one: the same reply as the folder with its tokenizer', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-tok-'));
  try {
    const demo = join(repoRoot, 'models', 'demo-llama');
    const bare = join(dir, 'bare');
    mkdirSync(bare);
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors'])
      copyFileSync(join(demo, f), join(bare, f));
    const args = ['--prompt', 'The number 52 is read as', '--max-new-tokens', '5'];
    const ref = run('generate', '--model', demo, ...args);
    assert.equal(ref.status, 0, ref.stderr);
    const missing = run('generate', '--model', bare, ...args);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /bare has no tokenizer\.json; give a folder that has one with --tokenizer DIR/);
    const withTok = run('generate', '--model', bare, '--tokenizer', demo, ...args);
    assert.equal(withTok.status, 0, withTok.stderr);
    assert.equal(withTok.stdout, ref.stdout);
    writeFileSync(join(dir, 'corpus.txt'), 'The number 52 is read as fifty-two.\n');
    const e = run(
      'eval',
      '--model',
      bare,
      '--tokenizer',
      demo,
      '--data',
      join(dir, 'corpus.txt'),
      '--max-length',
      '16',
    );
    assert.equal(e.status, 0, e.stderr);
    assert.equal(
      e.stdout,
      run('eval', '--model', demo, '--data', join(dir, 'corpus.txt'), '--max-length', '16').stdout,
    );
    assert.match(
      run('generate', '--model', bare, '--tokenizer', dir, ...args).stderr,
      /--tokenizer: .* has no tokenizer\.json/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate renders --prompt with the template recorded beside the adapter, and says which', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-template-'));
  try {
    const demo = join(repoRoot, 'models', 'demo-llama');
    const cfg = await readModelConfig(join(demo, 'config.json'));
    const spec = {
      name: 'default',
      r: 4,
      alpha: 8,
      targets: ['q_proj', 'v_proj'] as const,
      layers: [6, 7],
      dropout: 0,
    };
    const tensors = initLora({ ...spec, targets: [...spec.targets] }, cfg, 1);
    // PEFT starts B at zero (no effect); give it weights so the adapter changes what the model says.
    for (const [k, v] of tensors) if (k.includes('lora_B')) v.forEach((_, i) => (v[i] = Math.sin(i) * 0.05));
    // The layout of a run folder: adapter/ beside config.resolved.json.
    const runFolder = join(dir, 'runs', 'x');
    await savePeftAdapter(
      join(runFolder, 'adapter'),
      { spec: { ...spec, targets: [...spec.targets] }, tensors },
      cfg,
      demo,
    );
    writeFileSync(join(runFolder, 'config.resolved.json'), JSON.stringify({ data: { template: 'auto' } }));
    const args = ['--model', demo, '--adapter', join(runFolder, 'adapter'), '--max-new-tokens', '6'];
    const prompt = ['--prompt', 'Add the two numbers.', '--input', '3 plus 4'];
    const auto = run('generate', ...args, ...prompt);
    assert.equal(auto.status, 0, auto.stderr);
    assert.match(auto.stderr, /template: alpaca \(data\.template auto of .*runs\/x\/config\.resolved\.json\)/);
    const alpaca = run('generate', ...args, ...prompt, '--template', 'alpaca');
    assert.equal(alpaca.stdout, auto.stdout, 'auto is the recorded template');
    const raw = run('generate', ...args, ...prompt, '--template', 'raw');
    assert.equal(raw.status, 0, raw.stderr);
    assert.match(raw.stderr, /template: raw \(--template raw\)/);
    const chat = run('generate', ...args, '--chat', '[{"role":"user","content":"Add 3 and 4."}]');
    assert.equal(chat.status, 0, chat.stderr);
    assert.match(chat.stderr, /note: the adapter was trained with data\.template auto .* uses the chat template/);
    assert.match(run('generate', ...args, '--prompt', 'x', '--template', 'jinja').stderr, /--template must be one of/);
    // Without an adapter nothing is recorded: a base model continues the prompt as given.
    const base = run('generate', '--model', demo, '--prompt', 'The number 52 is', '--max-new-tokens', '2');
    assert.match(base.stderr, /template: raw \(nothing recorded with the adapter or model: the prompt as given\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

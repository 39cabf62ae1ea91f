/**
 * docs/own-data.md followed literally: the files its code blocks name are written as shown, `npm start`'s program
 * runs the job from the repository root (so the spec's relative paths must resolve against the spec file), and the
 * mistakes the page lists give the messages it quotes, before any run folder exists.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { repoRoot } from '../support/paths.js';

const doc = readFileSync(join(repoRoot, 'docs', 'own-data.md'), 'utf8');
const main = join(repoRoot, 'dist', 'bin', 'main.js');
let tmp = '';

/** The page's files: fenced blocks whose info string names a path after the language (```json my-job/x.json). */
function filesOfDoc(): Map<string, string> {
  const files = new Map<string, string>();
  for (const m of doc.matchAll(/^```[a-z]+ (\S+)\n([\s\S]*?)^```$/gm)) files.set(m[1]!, m[2]!);
  return files;
}

/** `npm start -- ARGS` as the page runs it: from the repository root. */
function start(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  // One onnxruntime thread: the machine is shared, and the walkthrough checks behaviour, not speed.
  return spawnSync(process.execPath, [main, ...args, '--set', 'model.threads=1'], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, CI: '1' },
  });
}

const job = (): string => join(tmp, 'my-job', 'job.yaml');
const manifestPath = (): string => join(tmp, 'my-job', 'data', 'manifest.json');
const runDir = (): string => join(tmp, 'my-job', 'runs', 'first-try');

before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'own-data-'));
  const files = filesOfDoc();
  assert.deepEqual(
    [...files.keys()].toSorted(),
    [
      'my-job/data/bakery.jsonl',
      'my-job/data/florist.jsonl',
      'my-job/data/garage.jsonl',
      'my-job/data/manifest.json',
      'my-job/data/public.txt',
      'my-job/job.yaml',
    ],
    'the files the page shows',
  );
  for (const [rel, text] of files) {
    mkdirSync(dirname(join(tmp, rel)), { recursive: true });
    writeFileSync(join(tmp, rel), text);
  }
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs `fn` with the manifest replaced by `edit(manifest)`, restoring it afterwards. */
function withManifest(edit: (m: Record<string, unknown>) => unknown, fn: () => void): void {
  const original = readFileSync(manifestPath(), 'utf8');
  writeFileSync(manifestPath(), JSON.stringify(edit(JSON.parse(original) as Record<string, unknown>)));
  try {
    fn();
  } finally {
    writeFileSync(manifestPath(), original);
  }
}

function failsBeforeRunFolder(r: ReturnType<typeof start>, message: RegExp): void {
  assert.equal(r.status, 1, `exit status 1; stderr:\n${r.stderr}`);
  assert.match(r.stderr, message);
  assert.ok(!existsSync(runDir()), 'no run folder left behind');
  assert.doesNotMatch(r.stderr, /evaluat/, 'no model work before the message');
}

test('manifest mistakes are named by file and field, before any run folder or model work', () => {
  const firstTrain = (train: unknown) => (m: Record<string, unknown>) => {
    const [first, ...rest] = m['clients'] as Record<string, unknown>[];
    return { ...m, clients: [{ ...first, train }, ...rest] };
  };
  withManifest(firstTrain({ file: 'bakery.jsonl' }), () =>
    failsBeforeRunFolder(
      start('--config', job()),
      /data\/manifest\.json: invalid federation manifest \(1 problem; format: docs\/own-data\.md\):\n {2}clients\[0\]\.train: expected a file path relative to the manifest's folder, as a string \("clients\/a\/train\.jsonl"\) or an object .*got \{"file":"bakery\.jsonl"\}/,
    ),
  );
  withManifest(
    (m) => ({ clients: m['clients'], publicCorpora: m['publicCorpus'] }),
    () =>
      failsBeforeRunFolder(
        start('--config', job()),
        /publicCorpora: unknown key \(expected one of: \$schema, name, .*publicCorpus\)/,
      ),
  );
  withManifest(firstTrain('bakery.json'), () =>
    failsBeforeRunFolder(
      start('--config', job()),
      /data\/manifest\.json: a file it names does not exist \(paths are relative to the manifest's folder .*my-job\/data\):\n {2}clients\[0\]\.train: .*my-job\/data\/bakery\.json\n/,
    ),
  );
});

test('a template that does not fit the records is named with file:line before any run folder', () => {
  failsBeforeRunFolder(
    start('--config', job(), '--set', 'data.template=raw'),
    /my-job\/data\/bakery\.jsonl:1: template "raw" does not apply to a alpaca record/,
  );
});

test('a pooled train.jsonl: partition by-field needs its field, and FedBiOT needs public text, said up front', () => {
  const pooled = join(tmp, 'my-job', 'pooled');
  mkdirSync(pooled, { recursive: true });
  const data = join(tmp, 'my-job', 'data');
  writeFileSync(
    join(pooled, 'train.jsonl'),
    ['bakery', 'florist', 'garage'].map((c) => readFileSync(join(data, `${c}.jsonl`), 'utf8')).join(''),
  );
  failsBeforeRunFolder(
    start('--config', job(), '--set', `data.federation=${pooled}`, '--set', 'data.partition=by-field'),
    /job\.yaml \(with overrides\): data\.partition\.field: required when kind is by-field: the record field that holds each example's client/,
  );
  failsBeforeRunFolder(
    start(
      '--config',
      job(),
      '--set',
      `data.federation=${pooled}`,
      '--set',
      'data.partition={"kind":"by-field","field":"shop"}',
    ),
    /alignment\.publicData: not set, and .*my-job\/pooled has no public\.txt beside its pooled train\.jsonl; method fedbiot aligns the emulator on public text \(4 steps\)/,
  );
});

test('the walkthrough runs end to end from the repository root, and a rerun offers resume or overwrite', () => {
  const r = start('--config', job());
  assert.equal(r.status, 0, r.stderr);
  const lastLine = r.stdout.trim().split('\n').at(-1)!;
  assert.equal(lastLine, runDir(), 'the run folder is beside job.yaml (outDir: runs), not in the current folder');
  assert.match(r.stdout, /data .*my-job\/data: bakery 6\/2, florist 6\/2, garage 6\/2 \(train\/test\)/);
  for (const f of ['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'results.json', 'report.html'])
    assert.ok(existsSync(join(runDir(), f)), `${f} written`);
  const rows = (JSON.parse(readFileSync(join(runDir(), 'results.json'), 'utf8')) as { rows: { client: string }[] })
    .rows;
  assert.deepEqual(
    [...new Set(rows.map((x) => x.client))].toSorted(),
    ['all', 'bakery', 'florist', 'garage'],
    'a row per client',
  );
  assert.equal(existsSync(join(repoRoot, 'runs', 'first-try')), false, 'nothing written under the current folder');

  const again = start('--config', job());
  assert.equal(again.status, 1);
  assert.match(
    again.stderr,
    /first-try already exists \(job id "first-try"; it holds checkpoints up to .*\): --resume continues it, --overwrite deletes it and starts again, or choose another job\.id/,
  );
  const changed = start('--config', job(), '--resume', '--set', 'job.rounds=3', '--set', 'clients.lr=0.01');
  assert.equal(changed.status, 1);
  assert.match(
    changed.stderr,
    /cannot resume with a different configuration .*2 fields changed:\n {2}job\.rounds: was 2, now 3\n {2}clients\.lr: was 0\.005, now 0\.01\n/,
  );
  const before = readdirSync(runDir()).toSorted();
  const both = start('--config', job(), '--resume', '--overwrite');
  assert.equal(both.status, 1);
  assert.match(both.stderr, /resume and overwrite exclude each other/);
  assert.deepEqual(readdirSync(runDir()).toSorted(), before, 'the run folder is untouched by refused commands');
});

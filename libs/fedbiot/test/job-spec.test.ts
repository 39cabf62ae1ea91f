import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULTS, applyOverrides, loadJobSpec, parseJobSpec, resolveJobSpec } from '../src/job-spec.js';
import { RESULT_METHODS, evalMethodsFor } from '../src/methods.js';
import { modelLoadOptions } from '../src/plan.js';
import { JobSpecError } from '../src/errors.js';
import { withTmp } from '../../../test/support/tmp.js';

/** The formatted problem lines of a JobSpecError thrown by `f`. */
/** The first of a list of problems; fails the test when there is none. */
function firstProblem(p: readonly string[]): string {
  return p[0] ?? assert.fail('expected at least one problem');
}

function problems(f: () => unknown): string[] {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof JobSpecError, `expected JobSpecError, got ${String(e)}`);
    return e.message
      .split('\n')
      .slice(1)
      .map((l) => l.trim());
  }
  assert.fail('expected a JobSpecError');
}

test('an empty spec resolves to the documented defaults (decisions block values)', () => {
  const s = resolveJobSpec(parseJobSpec('', 'empty.yaml'), 'empty.yaml');
  assert.equal(s.job.method, 'fedbiot');
  assert.equal(s.job.outDir, 'runs');
  assert.equal(s.job.id, undefined);
  assert.equal(s.model.checkpoint, 'models/demo-llama');
  assert.equal(s.model.provider, 'cpu');
  assert.deepEqual(s.split, { adapterLayers: 2, adapterBottom: 0, dropRate: 0.2 });
  assert.deepEqual(s.lora, { r: 8, alpha: 16, dropout: 0.05, targets: ['q_proj', 'v_proj'] });
  assert.equal(s.alignment.lambda, 1);
  assert.equal(s.alignment.mu, 0);
  assert.equal(s.clients.proxEps, 0);
  assert.deepEqual(s.clients.betas, [0.9, 0.95]);
  assert.deepEqual(s.clients.perRound, {});
  assert.equal(s.aggregation.weighting, 'tokens');
  assert.deepEqual(s.data.partition, { kind: 'iid' });
  assert.equal(s.data.federation, 'demo');
  // npm start shows FedBiOT next to offsite-tuning and local-only, so those baselines are on by default.
  assert.deepEqual(s.eval.methods, ['base', 'fedbiot-adapemu', 'fedbiot-adapfu', 'offsite-tuning', 'local-only']);
  assert.deepEqual(s.baselines, { offsiteTuning: true, localOnly: true, fedavgLora: false });
  assert.equal(s.job.rounds, DEFAULTS.job.rounds);
  assert.equal(s.clients.localSteps, DEFAULTS.clients.localSteps);
  // Defaults are fresh per call: mutating one resolved spec must not leak into the next.
  s.lora.targets.push('k_proj');
  assert.deepEqual(resolveJobSpec({}, 'x').lora.targets, ['q_proj', 'v_proj']);
});

test('method-dependent defaults: offsite-tuning gets 2 bottom adapter layers; explicit values win', () => {
  const ot = resolveJobSpec({ job: { method: 'offsite-tuning' } }, 'ot.yaml');
  assert.equal(ot.split.adapterBottom, 2);
  assert.equal(ot.split.adapterLayers, 2);
  assert.deepEqual(ot.eval.methods, ['base', 'offsite-tuning', 'local-only']);
  assert.equal(
    resolveJobSpec({ job: { method: 'offsite-tuning' }, split: { adapterBottom: 1 } }, 'x').split.adapterBottom,
    1,
  );
  const withBaselines = resolveJobSpec({ baselines: { localOnly: true, offsiteTuning: true, fedavgLora: true } }, 'x');
  assert.deepEqual(withBaselines.eval.methods, RESULT_METHODS, 'every result row, in report order');
  assert.deepEqual(evalMethodsFor('local-only', { offsiteTuning: false, localOnly: false, fedavgLora: false }), [
    'base',
    'local-only',
  ]);
});

test('YAML and JSON specs give the same resolved job', () => {
  const yaml = `
job:
  id: exp-1
  seed: 7
  rounds: 3
clients:
  lr: 3e-5            # YAML 1.2: a float
  perRound: { fraction: 0.5 }
lora:
  targets: [q_proj, k_proj, v_proj]
data:
  partition:
    kind: dirichlet
    alpha: 0.3
    field: category
`;
  const json = JSON.stringify({
    job: { id: 'exp-1', seed: 7, rounds: 3 },
    clients: { lr: 3e-5, perRound: { fraction: 0.5 } },
    lora: { targets: ['q_proj', 'k_proj', 'v_proj'] },
    data: { partition: { kind: 'dirichlet', alpha: 0.3, field: 'category' } },
  });
  const a = resolveJobSpec(parseJobSpec(yaml, 'job.yaml'), 'job.yaml');
  const b = resolveJobSpec(parseJobSpec(json, 'job.json'), 'job.json');
  assert.deepEqual(a, b);
  assert.equal(a.clients.lr, 3e-5);
  assert.deepEqual(a.data.partition, { kind: 'dirichlet', alpha: 0.3, field: 'category' });
});

test('an unknown key is an error naming its full path and the allowed keys', () => {
  const p = problems(() => resolveJobSpec(parseJobSpec('clients:\n  learningRate: 0.1\n', 'job.yaml'), 'job.yaml'));
  assert.equal(p.length, 1);
  assert.match(
    p[0]!,
    /^job\.yaml: clients\.learningRate: unknown key \(expected one of: perRound, localSteps, .*lr.*\)$/,
  );
  const top = problems(() => resolveJobSpec({ trainer: {} }, 'j.json'));
  assert.match(firstProblem(top), /^j\.json: trainer: unknown key/);
});

test('several bad values are reported together, each as <file>: <path>: <message>', () => {
  const p = problems(() =>
    resolveJobSpec(
      {
        job: { rounds: 0, method: 'fedprox' },
        model: { provider: 'tpu' },
        lora: { r: 2.5, targets: ['q_proj', 'attn'] },
        clients: { lr: 'fast', perRound: { fraction: 0.5, count: 2 } },
        data: { partition: { kind: 'by-field' } },
        split: { dropRate: 1 },
        eval: { methods: ['local-only'] },
      },
      'bad.yaml',
    ),
  );
  const paths = p.map((l) => l.split(': ')[1]).toSorted();
  assert.deepEqual(paths, [
    'clients.lr',
    'clients.perRound',
    'data.partition.field',
    'job.method',
    'job.rounds',
    'lora.r',
    'lora.targets[1]',
    'model.provider',
    'split.dropRate',
  ]);
  assert.ok(p.every((l) => l.startsWith('bad.yaml: ')));
  assert.ok(p.some((l) => l === 'bad.yaml: clients.perRound: give fraction or count, not both'));
  // The method-vs-eval check runs once the sections are valid.
  const e = problems(() => resolveJobSpec({ eval: { methods: ['base', 'fedavg-lora'] } }, 'e.yaml'));
  assert.deepEqual(e, [
    'e.yaml: eval.methods[1]: "fedavg-lora" is not produced by this job (method fedbiot; available: base, fedbiot-adapemu, fedbiot-adapfu, offsite-tuning, local-only)',
  ]);
});

test('syntax errors carry file:line:col; a non-mapping document is rejected', () => {
  const p = problems(() => parseJobSpec('job:\n  rounds: 3\n  rounds: 4\n', 'dup.yaml'));
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^dup\.yaml:3:3: Map keys must be unique$/);
  assert.match(firstProblem(problems(() => parseJobSpec('{"job": ', 'j.json'))), /^j\.json: invalid JSON: /);
  assert.match(
    firstProblem(problems(() => resolveJobSpec(parseJobSpec('- 1\n- 2\n', 'list.yaml'), 'list.yaml'))),
    /^list\.yaml: Invalid input: expected object/,
  );
});

test('overrides: JSON values when they parse, text otherwise, text-only fields keep the text', () => {
  const raw = { job: { rounds: 9 }, clients: { batchSize: 2 } };
  const out = applyOverrides(raw, [
    'clients.lr=3e-5',
    'job.rounds=3',
    'job.id=007',
    'lora.targets=["q_proj","k_proj"]',
    'data.federation=./fed/manifest.json',
    'baselines.localOnly=true',
    'clients.betas=[0.9,0.99]',
    'model.checkpoint=123',
  ]);
  assert.deepEqual(raw, { job: { rounds: 9 }, clients: { batchSize: 2 } }, 'input not mutated');
  const s = resolveJobSpec(out, 'x');
  assert.equal(s.clients.lr, 3e-5);
  assert.equal(s.clients.batchSize, 2);
  assert.equal(s.job.rounds, 3);
  assert.equal(s.job.id, '007');
  assert.deepEqual(s.lora.targets, ['q_proj', 'k_proj']);
  assert.equal(s.data.federation, './fed/manifest.json');
  assert.equal(s.baselines.localOnly, true);
  assert.deepEqual(s.clients.betas, [0.9, 0.99]);
  assert.equal(s.model.checkpoint, '123');
  // A value of the wrong type is caught by validation, not silently coerced.
  assert.match(
    firstProblem(problems(() => resolveJobSpec(applyOverrides({}, ['job.rounds=three']), 'x'))),
    /^x: job\.rounds: Invalid input: expected number, received string$/,
  );
});

test('overrides: every bad path is reported, naming it', () => {
  const p = problems(() =>
    applyOverrides({ clients: 5 }, ['clients.lrr=1', 'nope.x=2', 'job.rounds.x=3', 'noequals', 'clients.lr=1']),
  );
  assert.deepEqual(p, [
    'overrides: clients.lrr: unknown key in clients "lrr" (expected one of: perRound, localSteps, batchSize, gradAccum, lr, betas, weightDecay, proxEps, maxGradNorm)',
    'overrides: nope.x: unknown section "nope" (expected one of: job, model, split, lora, data, clients, alignment, aggregation, eval, baselines, privacy)',
    'overrides: job.rounds.x: job.rounds is a value, not a section',
    'overrides: noequals: expected path=value',
    'overrides: clients: is 5 in the spec, not a section; cannot set clients.lr',
  ]);
});

test('loadJobSpec reads a file and applies overrides', async () => {
  await withTmp('fedbiot-jobspec-', async (dir) => {
    const file = join(dir, 'job.yaml');
    await writeFile(file, 'job:\n  rounds: 4\nclients:\n  localSteps: 3\n');
    const s = await loadJobSpec(file, ['job.rounds=2']);
    assert.equal(s.job.rounds, 2);
    assert.equal(s.clients.localSteps, 3);
    await assert.rejects(loadJobSpec(join(dir, 'missing.yaml')), /missing\.yaml: cannot read/);
    await assert.rejects(
      loadJobSpec(file, ['clients.localSteps=0']),
      /job\.yaml \(with overrides\): clients\.localSteps: Too small/,
    );
  });
});

test('paths written in a spec file are relative to the file; --set paths and defaults to the current folder', async () => {
  await withTmp('fedbiot-jobspec-', async (dir) => {
    const file = join(dir, 'sub', 'job.yaml');
    await mkdir(join(dir, 'sub'));
    await writeFile(
      file,
      'job: {outDir: runs}\nmodel: {checkpoint: ../models/m}\ndata: {federation: data}\nalignment: {publicData: /abs/public.txt}\n',
    );
    const s = await loadJobSpec(file, ['model.checkpoint=cli/model']);
    assert.equal(s.job.outDir, join(dir, 'sub', 'runs'));
    assert.equal(s.data.federation, join(dir, 'sub', 'data'));
    assert.equal(s.alignment.publicData, '/abs/public.txt');
    assert.equal(s.model.checkpoint, 'cli/model', 'an override stays relative to the current folder');
    await writeFile(file, 'data: {federation: demo}\n');
    const d = await loadJobSpec(file);
    assert.equal(d.data.federation, 'demo', '"demo" is no path');
    assert.equal(d.model.checkpoint, DEFAULTS.model.checkpoint, 'defaults are not rebased');
  });
});

test('partition shorthand: a kind alone stands for {kind}; by-field and dirichlet say what they still need', () => {
  assert.deepEqual(resolveJobSpec({ data: { partition: 'iid' } }, 'p.yaml').data.partition, { kind: 'iid' });
  assert.deepEqual(
    resolveJobSpec(applyOverrides({}, ['data.partition=by-field', 'data.partition.field=shop']), 'p.yaml').data
      .partition,
    { kind: 'by-field', field: 'shop' },
  );
  assert.throws(
    () => resolveJobSpec({ data: { partition: 'by-field' } }, 'p.yaml'),
    /p\.yaml: data\.partition\.field: required when kind is by-field: the record field that holds each example's client \(one client per value\), e\.g\. partition: \{kind: by-field, field: category\}/,
  );
  assert.throws(
    () => resolveJobSpec({ data: { partition: 'by_field' } }, 'p.yaml'),
    /p\.yaml: data\.partition\.kind: Invalid option: expected one of "iid"\|"dirichlet"\|"by-field"/,
  );
});

test('eval.mode: private by default; ownerValidation takes one path or a list; simulation refuses it, naming the field', () => {
  const d = resolveJobSpec({}, 'd.yaml');
  assert.equal(d.eval.mode, 'private');
  assert.equal(d.eval.ownerValidation, undefined);
  const one = resolveJobSpec({ eval: { ownerValidation: 'owner/val.jsonl' } }, 'one.yaml');
  assert.deepEqual(one.eval.ownerValidation, ['owner/val.jsonl']);
  const two = resolveJobSpec({ eval: { ownerValidation: ['a.jsonl', 'b.jsonl'] } }, 'two.yaml');
  assert.deepEqual(two.eval.ownerValidation, ['a.jsonl', 'b.jsonl']);
  assert.equal(resolveJobSpec({ eval: { mode: 'simulation' } }, 's.yaml').eval.mode, 'simulation');
  assert.deepEqual(
    problems(() => resolveJobSpec({ eval: { mode: 'simulation', ownerValidation: 'v.jsonl' } }, 'x.yaml')),
    ["x.yaml: eval.ownerValidation: only used in mode private (simulation evaluates on the clients' test sets)"],
  );
  const bad = problems(() => resolveJobSpec({ eval: { mode: 'everyone', ownerValidation: [] } }, 'y.yaml'));
  assert.equal(bad.length, 2, bad.join('\n'));
  assert.match(bad[0]!, /^y\.yaml: eval\.mode: /);
  assert.match(bad[1]!, /^y\.yaml: eval\.ownerValidation/);
  // The override parser keeps a plain path as text.
  const o = resolveJobSpec(applyOverrides({}, ['eval.ownerValidation=owner/v.jsonl']), 'o');
  assert.deepEqual(o.eval.ownerValidation, ['owner/v.jsonl']);
});

test('data.publicCorpus: absent by default (the resolved data section is unchanged); knowledge demo only, named in errors', () => {
  // Absent, not defaulted: specs without it resolve to the same config as before, so earlier runs still resume.
  const d = resolveJobSpec({ data: { federation: 'demo-knowledge' } }, 'd.yaml');
  assert.equal('publicCorpus' in d.data, false);
  assert.deepEqual(Object.keys(d.data).toSorted(), [
    'federation',
    'maxLength',
    'partition',
    'template',
    'testFraction',
  ]);
  const p = resolveJobSpec(
    applyOverrides({}, ['data.federation=demo-knowledge', 'data.publicCorpus=pretraining']),
    'p.yaml',
  );
  assert.equal(p.data.publicCorpus, 'pretraining');
  assert.equal(
    resolveJobSpec({ data: { federation: 'demo-knowledge', publicCorpus: 'general' } }, 'g').data.publicCorpus,
    'general',
  );
  const bad = problems(() => resolveJobSpec({ data: { federation: 'demo-knowledge', publicCorpus: 'facts' } }, 'b'));
  assert.equal(bad.length, 1, bad.join('\n'));
  assert.match(firstProblem(bad), /^b: data\.publicCorpus: .*"general".*"pretraining"/);
  const other = problems(() => resolveJobSpec({ data: { publicCorpus: 'pretraining' } }, 'o'));
  assert.deepEqual(other.length, 1, other.join('\n'));
  assert.match(
    firstProblem(other),
    /^o: data\.publicCorpus: only applies to the knowledge demo \(data\.federation demo-knowledge, not "demo"\)/,
  );
  const both = problems(() =>
    resolveJobSpec(
      { data: { federation: 'demo-knowledge', publicCorpus: 'pretraining' }, alignment: { publicData: 'p.txt' } },
      'x',
    ),
  );
  assert.deepEqual(both.length, 1, both.join('\n'));
  assert.match(
    firstProblem(both),
    /^x: data\.publicCorpus: give data\.publicCorpus or alignment\.publicData, not both/,
  );
});

test('data.knowledgeClients: absent by default; by-relation or iid, knowledge demo only, named in errors', () => {
  const d = resolveJobSpec({ data: { federation: 'demo-knowledge' } }, 'd.yaml');
  assert.equal('knowledgeClients' in d.data, false);
  const i = resolveJobSpec(
    applyOverrides({}, ['data.federation=demo-knowledge', 'data.knowledgeClients=iid']),
    'i.yaml',
  );
  assert.equal(i.data.knowledgeClients, 'iid');
  assert.equal(
    resolveJobSpec({ data: { federation: 'demo-knowledge', knowledgeClients: 'by-relation' } }, 'r').data
      .knowledgeClients,
    'by-relation',
  );
  const bad = problems(() =>
    resolveJobSpec({ data: { federation: 'demo-knowledge', knowledgeClients: 'mixed' } }, 'b'),
  );
  assert.equal(bad.length, 1, bad.join('\n'));
  assert.match(firstProblem(bad), /^b: data\.knowledgeClients: .*"by-relation".*"iid"/);
  const other = problems(() => resolveJobSpec({ data: { knowledgeClients: 'iid' } }, 'o'));
  assert.deepEqual(other.length, 1, other.join('\n'));
  assert.match(
    firstProblem(other),
    /^o: data\.knowledgeClients: only applies to the knowledge demo \(data\.federation demo-knowledge, not "demo"\)/,
  );
});

test('model.activations: absent by default; float16 needs half weights (error names the field) and reaches the load options', () => {
  const d = resolveJobSpec({}, 'd.yaml');
  assert.equal('activations' in d.model, false);
  assert.deepEqual(modelLoadOptions(d), { provider: 'cpu' });
  const bad = problems(() => resolveJobSpec({ model: { activations: 'float16' } }, 'b.yaml'));
  assert.equal(bad.length, 1, bad.join('\n'));
  assert.match(firstProblem(bad), /^b\.yaml: model\.activations: float16 activations need weightsDtype/);
  const ok = resolveJobSpec(
    applyOverrides({}, ['model.provider=cuda', 'model.weightsDtype=bfloat16', 'model.activations=float16']),
    'ok',
  );
  assert.deepEqual(modelLoadOptions(ok), { provider: 'cuda', weightsDtype: 'bfloat16', activations: 'float16' });
});

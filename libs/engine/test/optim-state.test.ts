import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AdamW,
  restoreOptimizer,
  SGD,
  stateFromTensors,
  stateToTensors,
  type Optimizer,
  type OptimizerState,
} from '../src/optim/index.js';

const NAMES = [
  'model.layers.0.self_attn.q_proj.lora_A.weight',
  'model.layers.0.self_attn.q_proj.lora_B.weight',
  'odd/name',
];
const SIZES = [24, 16, 1];

function freshParams(): Map<string, Float32Array> {
  return new Map(
    NAMES.map((n, k) => [n, Float32Array.from({ length: SIZES[k]! }, (_, i) => Math.sin(7 * i + k) + 0.1)]),
  );
}

/** Gradients of sum 0.5 * c_i * (p_i - 1)^2 + a small sine term: depend on the current parameters, like training. */
function gradsOf(params: Map<string, Float32Array>, step: number): Map<string, Float32Array> {
  return new Map(
    [...params].map(([n, p]) => [n, p.map((x, i) => (1 + (i % 5)) * (x - 1) + 0.05 * Math.sin(step + i))]),
  );
}

/** What a tensor file does: bytes out, bytes back in; meta as a string. */
function persist(state: OptimizerState): { meta: string; tensors: Map<string, Float32Array> } {
  const { meta, tensors } = stateToTensors(state);
  const copied = new Map<string, Float32Array>();
  for (const [name, t] of tensors) {
    const bytes = Buffer.from(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
    const back = new Uint8Array(bytes.length);
    back.set(bytes);
    copied.set(name, new Float32Array(back.buffer));
  }
  return { meta: String(meta), tensors: copied };
}

function resumeMatchesUninterrupted(
  make: (p: Map<string, Float32Array>) => Optimizer,
  makeOther: (p: Map<string, Float32Array>) => Optimizer,
) {
  const total = 10;
  const cut = 4;
  const straight = freshParams();
  const a = make(straight);
  for (let s = 0; s < total; s++) a.step(straight, gradsOf(straight, s));

  const resumed = freshParams();
  const b = make(resumed);
  for (let s = 0; s < cut; s++) b.step(resumed, gradsOf(resumed, s));
  const saved = b.exportState();
  const { meta, tensors } = persist(saved);
  b.step(resumed, gradsOf(resumed, cut)); // later steps must not leak into the exported copy
  assert.deepEqual(saved.slots, stateFromTensors(meta, tensors).slots);

  // Restart from the checkpoint: the parameters as they were at the cut, an optimizer built with other settings.
  const restartParams = freshParams();
  const replay = make(restartParams);
  for (let s = 0; s < cut; s++) replay.step(restartParams, gradsOf(restartParams, s));
  const c = makeOther(restartParams);
  c.importState(stateFromTensors(meta, tensors));
  assert.equal(c.stepCount, cut);
  assert.equal(c.currentLr(), replay.currentLr());
  for (let s = cut; s < total; s++) c.step(restartParams, gradsOf(restartParams, s));

  for (const n of NAMES) assert.deepEqual(restartParams.get(n), straight.get(n), `parameter ${n}`);
  assert.deepEqual(c.exportState(), a.exportState());

  // restoreOptimizer needs nothing but the state.
  const restoredParams = freshParams();
  const r0 = make(restoredParams);
  for (let s = 0; s < cut; s++) r0.step(restoredParams, gradsOf(restoredParams, s));
  const r = restoreOptimizer(restoredParams, stateFromTensors(meta, tensors));
  for (let s = cut; s < total; s++) r.step(restoredParams, gradsOf(restoredParams, s));
  for (const n of NAMES) assert.deepEqual(restoredParams.get(n), straight.get(n), `restored ${n}`);
}

test('AdamW: export -> tensors -> import into a fresh optimizer continues bit-for-bit', () => {
  resumeMatchesUninterrupted(
    (p) =>
      new AdamW(p, {
        lr: 0.02,
        betas: [0.9, 0.95],
        weightDecay: 0.01,
        schedule: { kind: 'cosine', warmupSteps: 2, totalSteps: 10, minLrRatio: 0.1 },
      }),
    (p) => new AdamW(p), // different hyper-parameters and schedule: the state's must win
  );
});

test('SGD: export -> tensors -> import into a fresh optimizer continues bit-for-bit', () => {
  resumeMatchesUninterrupted(
    (p) =>
      new SGD(p, {
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        weightDecay: 0.01,
        schedule: { kind: 'linear', totalSteps: 10, minLrRatio: 0 },
      }),
    (p) => new SGD(p, { lr: 0.5 }), // no momentum here: importing must allocate the buffers
  );
});

test('importState rejects a missing or mis-sized slot, naming the parameter, and changes nothing', () => {
  const params = freshParams();
  const opt = new AdamW(params);
  opt.step(params, gradsOf(params, 0));
  const good = opt.exportState();
  const [w, v] = NAMES as [string, string];
  const withSlots = (slots: OptimizerState['slots']): OptimizerState => ({ ...good, slots });

  const { [w]: _dropped, ...withoutW } = good.slots;
  assert.throws(
    () => opt.importState(withSlots(withoutW)),
    new RegExp(`no slots for parameter "${w.replace(/\./g, '\\.')}"`),
  );
  assert.throws(
    () => opt.importState(withSlots({ ...good.slots, [v]: { exp_avg: good.slots[v]!.exp_avg! } })),
    /parameter "model\.layers\.0\.self_attn\.q_proj\.lora_B\.weight" is missing slot "exp_avg_sq"/,
  );
  assert.throws(
    () => opt.importState(withSlots({ ...good.slots, [v]: { ...good.slots[v], exp_avg: new Float32Array(15) } })),
    /slot "exp_avg" of parameter "model\.layers\.0\.self_attn\.q_proj\.lora_B\.weight" has 15 values, expected 16/,
  );
  assert.throws(() => opt.importState(withSlots({ ...good.slots, extra: {} })), /unknown parameter "extra"/);
  assert.throws(() => opt.importState({ ...good, kind: 'sgd' }), /state is for optimizer kind 'sgd', not 'adamw'/);
  assert.throws(() => opt.importState({ ...good, step: -1 }), /step/);
  assert.throws(() => opt.importState({ ...good, hyper: { ...good.hyper, betas: [0.9] } }), /hyper\.betas/);
  assert.throws(() => opt.importState({ ...good, hyper: { ...good.hyper, lr: 'fast' } }), /hyper\.lr/);
  assert.throws(
    () => opt.importState({ ...good, hyper: { ...good.hyper, momentum: 0.9 } }),
    /unknown hyper-parameter "momentum"/,
  );
  // Nothing above changed the optimizer.
  assert.deepEqual(opt.exportState(), good);

  const sgd = new SGD(params, { momentum: 0.9 });
  const s = sgd.exportState();
  assert.throws(
    () => sgd.importState({ ...s, slots: { ...s.slots, [w]: {} } }),
    /parameter "model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight" is missing slot "momentum_buffer"/,
  );
  assert.throws(() => sgd.importState({ ...s, hyper: { ...s.hyper, nesterov: 2 } }), /hyper\.nesterov/);
});

test('stateFromTensors names the missing or mis-sized tensor and rejects malformed meta', () => {
  const params = freshParams();
  const opt = new SGD(params, { momentum: 0.5 });
  opt.step(params, gradsOf(params, 0));
  const { meta, tensors } = stateToTensors(opt.exportState(), 'opt/');
  const key = `opt/${NAMES[2]}.momentum_buffer`;
  assert.ok(tensors.has(key));
  const missing = new Map(tensors);
  missing.delete(key);
  assert.throws(
    () => stateFromTensors(meta, missing),
    /slot "momentum_buffer" of parameter "odd\/name": tensor "opt\/odd\/name\.momentum_buffer" is missing/,
  );
  assert.throws(
    () => stateFromTensors(meta, new Map(tensors).set(key, new Float32Array(2))),
    /tensor "opt\/odd\/name\.momentum_buffer" has 2 values, meta says 1/,
  );
  assert.throws(() => stateFromTensors('{not json', tensors), /meta is not valid JSON/);
  assert.throws(() => stateFromTensors(JSON.stringify({ ...JSON.parse(meta), format: 'v0' }), tensors), /meta\.format/);
  assert.throws(() => stateFromTensors(JSON.stringify({ ...JSON.parse(meta), kind: 'adam' }), tensors), /meta\.kind/);
  // Unrelated tensors in the same file are ignored.
  const withWeights = new Map(tensors).set('model.embed_tokens.weight', new Float32Array(8));
  assert.deepEqual(stateFromTensors(meta, withWeights).slots, opt.exportState().slots);
});

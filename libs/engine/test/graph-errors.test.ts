/** Bad graphs fail at build time with messages that name the op, the tensors and their shapes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph } from '../src/graph.js';
import * as O from '../src/ops.js';
import { gradients } from '../src/autodiff.js';
import { GraphError, ShapeError } from '../src/errors.js';
import { linear } from '../src/nn.js';

test('shape mismatch names the op and both shapes', () => {
  const g = new Graph('g');
  const a = g.input('a', 'float32', [2, 3]);
  const b = g.input('b', 'float32', [4, 5]);
  assert.throws(
    () => O.matmul(a, b),
    (e: Error) =>
      e instanceof ShapeError && /MatMul/.test(e.message) && /\[2, 3\]/.test(e.message) && /\[4, 5\]/.test(e.message),
  );
  assert.throws(
    () => O.add(a, b),
    (e: Error) => e instanceof ShapeError && /Add/.test(e.message) && /\[2, 3\] and \[4, 5\]/.test(e.message),
  );
  const w = g.input('w', 'float32', [8, 7]);
  assert.throws(() => linear(a, w), /linear: weight w:float32\[8, 7\] does not take inputs of 3 features/);
  assert.throws(() => O.reshape(a, [4, 2]), /Reshape: cannot reshape a:float32\[2, 3\]/);
});

test('dtype mismatch names both tensors', () => {
  const g = new Graph('g');
  const a = g.input('a', 'float32', [2]);
  const b = g.input('b', 'float64', [2]);
  assert.throws(() => O.mul(a, b), /Mul: dtypes differ: a:float32\[2\] vs b:float64\[2\]/);
});

test('a tensor of another graph is an unknown tensor', () => {
  const g1 = new Graph('one');
  const g2 = new Graph('two');
  const a = g1.input('a', 'float32', [2]);
  const b = g2.input('b', 'float32', [2]);
  assert.throws(
    () => O.add(a, b),
    (e: Error) =>
      e instanceof GraphError && /belongs to graph two, not one|belongs to graph one, not two/.test(e.message),
  );
});

test('gradient of a non-scalar is refused', () => {
  const g = new Graph('g');
  const x = g.input('x', 'float32', [3]);
  const y = O.mul(x, 2);
  assert.throws(() => gradients(y, [x]), /the loss must be a scalar, got Mul_\d+:float32\[3\]/);
});

test('gradient with respect to a tensor the loss does not depend on is refused, or null when allowed', () => {
  const g = new Graph('g');
  const x = g.input('x', 'float32', [3]);
  const z = g.input('z', 'float32', [3]);
  const loss = O.sumAll(O.mul(x, x));
  assert.throws(() => gradients(loss, [x, z]), /does not depend on z/);
  const [gx, gz] = gradients(loss, [x, z], { allowUnused: true });
  assert.ok(gx);
  assert.equal(gz, null);
});

test('gradient through a non-differentiable op is refused with the op named', () => {
  const g = new Graph('g');
  const x = g.input('x', 'float32', [3]);
  const m = O.reduceMax(x, [0]);
  assert.throws(() => gradients(O.mul(m, 2), [x]), /op ReduceMax .* is not differentiable/);
});

test('frozen weights get no gradient nodes: only the LoRA path is differentiated', () => {
  const g = new Graph('g');
  const x = g.input('x', 'float32', [4, 8]);
  const w = g.weight('W', 'float32', [8, 8], { data: new Float32Array(64) });
  const a = g.input('lora_A', 'float32', [2, 8]);
  const b = g.input('lora_B', 'float32', [8, 2]);
  const y = O.add(linear(x, w), O.mul(linear(linear(x, a), b), 2));
  const [ga, gb] = gradients(O.sumAll(y), [a, b]);
  g.output(ga!, 'gA');
  g.output(gb!, 'gB');
  const nodes = g.toIr().nodes;
  // the frozen Gemm(x, W) is not even needed by the gradient outputs, and nothing computes a W gradient
  assert.ok(!nodes.some((n) => n.inputs.includes('W')), 'no node touches W: ' + nodes.map((n) => n.opType).join(','));
});

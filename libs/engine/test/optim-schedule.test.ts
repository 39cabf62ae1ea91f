import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lrAt, SGD, validateSchedule, type ScheduleSpec } from '../src/optim/index.js';

const close = (a: number, b: number, tol: number, what: string) =>
  assert.ok(Math.abs(a - b) <= tol, `${what}: got ${a}, expected ${b} (tol ${tol})`);

// transformers tests/optimization/test_optimization.py::ScheduleInitTest.test_schedulers: base lr 10,
// num_warmup_steps 2, num_training_steps 10, lr before each of 10 steps, checked there to 1e-2.
test('schedules reproduce the lr sequences of transformers test_schedulers', () => {
  const cases: [ScheduleSpec, number[]][] = [
    [{ kind: 'constant' }, Array<number>(10).fill(10)],
    [{ kind: 'constant', warmupSteps: 4 }, [0.0, 2.5, 5.0, 7.5, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]],
    [
      { kind: 'linear', warmupSteps: 2, totalSteps: 10, minLrRatio: 0 },
      [0.0, 5.0, 10.0, 8.75, 7.5, 6.25, 5.0, 3.75, 2.5, 1.25],
    ],
    [
      { kind: 'cosine', warmupSteps: 2, totalSteps: 10, minLrRatio: 0 },
      [0.0, 5.0, 10.0, 9.61, 8.53, 6.91, 5.0, 3.08, 1.46, 0.38],
    ],
  ];
  for (const [spec, expected] of cases) {
    expected.forEach((lr, step) => close(lrAt(spec, step, 10), lr, 1e-2, `${spec.kind} step ${step}`));
  }
});

test('cosine with warm-up: step 0, mid warm-up, end of warm-up, middle, last step, floor', () => {
  const spec: ScheduleSpec = { kind: 'cosine', warmupSteps: 10, totalSteps: 110, minLrRatio: 0 };
  assert.equal(lrAt(spec, 0), 0);
  assert.equal(lrAt(spec, 5), 0.5);
  assert.equal(lrAt(spec, 10), 1);
  close(lrAt(spec, 60), 0.5, 1e-15, 'middle of the decay'); // progress 0.5 -> 0.5 * (1 + cos(pi/2))
  close(lrAt(spec, 109), 0.5 * (1 + Math.cos(Math.PI * 0.99)), 1e-15, 'last step');
  assert.equal(lrAt(spec, 110), 0);
  // With a floor: r + (1 - r) * c.
  const floored: ScheduleSpec = { ...spec, minLrRatio: 0.1 };
  close(lrAt(floored, 60), 0.1 + 0.9 * 0.5, 1e-15, 'middle with floor');
  close(lrAt(floored, 110), 0.1, 1e-15, 'end with floor');
  // Held at the floor past totalSteps (transformers would rise again).
  close(lrAt(floored, 200), 0.1, 1e-15, 'past the end');
  close(lrAt(spec, 60, 1e-4), 0.5e-4, 1e-19, 'scaled by baseLr');
});

test('linear with warm-up: step 0, mid warm-up, end of warm-up, middle, last step, floor', () => {
  const spec: ScheduleSpec = { kind: 'linear', warmupSteps: 10, totalSteps: 110, minLrRatio: 0 };
  assert.equal(lrAt(spec, 0), 0);
  assert.equal(lrAt(spec, 5), 0.5);
  assert.equal(lrAt(spec, 10), 1);
  assert.equal(lrAt(spec, 60), 0.5); // (110 - 60) / 100
  assert.equal(lrAt(spec, 109), 0.01);
  assert.equal(lrAt(spec, 110), 0);
  assert.equal(lrAt(spec, 500), 0);
  const floored: ScheduleSpec = { ...spec, minLrRatio: 0.2 };
  close(lrAt(floored, 60), 0.2 + 0.8 * 0.5, 1e-15, 'middle with floor');
  close(lrAt(floored, 500), 0.2, 1e-15, 'past the end with floor');
  // Without warm-up the first step runs at the full rate.
  assert.equal(lrAt({ kind: 'linear', totalSteps: 4, minLrRatio: 0 }, 0), 1);
});

test('the optimizer step with index k runs at lrAt(schedule, k)', () => {
  const schedule: ScheduleSpec = { kind: 'linear', warmupSteps: 2, totalSteps: 6, minLrRatio: 0 };
  const p = new Float32Array([0]);
  const params = new Map([['w', p]]);
  const grads = new Map([['w', new Float32Array([1])]]);
  const opt = new SGD(params, { lr: 0.5, schedule });
  const expected = [0, 0.25, 0.5, 0.375, 0.25, 0.125];
  for (let k = 0; k < expected.length; k++) {
    assert.equal(opt.currentLr(), expected[k]);
    const before = p[0]!;
    opt.step(params, grads); // plain SGD with grad 1 moves the parameter by exactly the lr used
    close(before - p[0]!, expected[k]!, 1e-7, `step ${k}`);
  }
});

test('invalid schedules are rejected with the field named', () => {
  assert.throws(() => validateSchedule({ kind: 'cosine', totalSteps: 0, minLrRatio: 0 }), /totalSteps/);
  assert.throws(() => validateSchedule({ kind: 'cosine', totalSteps: 10, minLrRatio: 1.5 }), /minLrRatio/);
  assert.throws(
    () => validateSchedule({ kind: 'linear', totalSteps: 10, minLrRatio: 0, warmupSteps: 11 }),
    /warmupSteps/,
  );
  assert.throws(() => validateSchedule({ kind: 'linear', totalSteps: 10 }), /minLrRatio/);
  assert.throws(() => validateSchedule({ kind: 'constant', warmupSteps: 1.5 }), /warmupSteps/);
  assert.throws(() => validateSchedule({ kind: 'constant', totalStep: 3 }), /unknown field "totalStep"/);
  assert.throws(() => validateSchedule({ kind: 'step' }), /kind/);
  assert.throws(() => lrAt({ kind: 'constant' }, -1), /step/);
  assert.throws(
    () => new SGD(new Map(), { schedule: { kind: 'cosine', totalSteps: 5, minLrRatio: -1 } }),
    /minLrRatio/,
  );
});

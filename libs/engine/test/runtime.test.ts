import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DType, IrInitializer, IrModel, IrNode } from '../src/ir.js';
import { encodeModel, writeModel } from '../src/onnx/serialize.js';
import {
  graphComputesInFloat64,
  hostTensor,
  openRunner,
  RunnerError,
  type HostData,
  type HostTensor,
  type ModelRunner,
  type OpenRunnerOptions,
} from '../src/runtime/index.js';

const THREADS = 1;

function bytesOf(data: HostData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function init(name: string, dtype: DType, shape: number[], data: HostData): IrInitializer {
  return { name, dtype, shape, raw: bytesOf(data) };
}

function node(opType: string, inputs: string[], outputs: string[]): IrNode {
  return { opType, domain: '', name: outputs[0]!, inputs, outputs, attributes: {} };
}

// y_k = x_k @ W_k + b_k for k in {f (float32), d (float64), i (int64)}, x_k [2,3], W_k [3,4], b_k [4].
const W = [1, -2, 3, 0.5, -1, 4, 2, -3, 0.25, 1, -1, 2];
const W_INT = [1, -2, 3, 5, -1, 4, 2, -3, 7, 1, -1, 2];
const AFFINE: IrModel = (() => {
  const suffixes: [string, DType, HostData][] = [
    ['f', 'float32', Float32Array.from(W)],
    ['d', 'float64', Float64Array.from(W)],
    ['i', 'int64', BigInt64Array.from(W_INT.map(BigInt))],
  ];
  return {
    name: 'affine',
    opset: 17,
    inputs: suffixes.flatMap(([s, dtype]) => [
      { name: `x${s}`, dtype, shape: [2, 3] },
      { name: `b${s}`, dtype, shape: [4] },
    ]),
    outputs: suffixes.map(([s, dtype]) => ({ name: `y${s}`, dtype, shape: [2, 4] })),
    initializers: suffixes.map(([s, dtype, w]) => init(`W${s}`, dtype, [3, 4], w)),
    nodes: suffixes.flatMap(([s]) => [
      node('MatMul', [`x${s}`, `W${s}`], [`m${s}`]),
      node('Add', [`m${s}`, `b${s}`], [`y${s}`]),
    ]),
  };
})();

const X = [0.5, -1.5, 2, 3, 0.25, -4];
const X_INT = [2, -1, 3, -4, 5, 6];
const B = [0.1, -0.2, 0.3, -0.4];
const B_INT = [10, -20, 30, -40];

function affineFeeds(): Record<string, HostTensor> {
  return {
    xf: hostTensor('float32', [2, 3], Float32Array.from(X)),
    bf: hostTensor('float32', [4], Float32Array.from(B)),
    xd: hostTensor('float64', [2, 3], Float64Array.from(X)),
    bd: hostTensor('float64', [4], Float64Array.from(B)),
    xi: hostTensor('int64', [2, 3], BigInt64Array.from(X_INT.map(BigInt))),
    bi: hostTensor('int64', [4], BigInt64Array.from(B_INT.map(BigInt))),
  };
}

/** x @ w + b for row-major x [2,3], w [3,4], b [4], in float64 (exact for these small integers). */
function affineRef(x: number[], w: number[], b: number[]): number[] {
  const y: number[] = [];
  for (let r = 0; r < 2; r++) {
    for (let c = 0; c < 4; c++) {
      let acc = b[c]!;
      for (let k = 0; k < 3; k++) acc += x[r * 3 + k]! * w[k * 4 + c]!;
      y.push(acc);
    }
  }
  return y;
}

const OPTS: OpenRunnerOptions = { intraOpNumThreads: THREADS, computeDtype: 'float64' };

async function withRunner<T>(
  source: { path: string } | { bytes: Uint8Array },
  opts: OpenRunnerOptions,
  fn: (r: ModelRunner) => Promise<T>,
): Promise<T> {
  const runner = await openRunner(source, opts);
  try {
    return await fn(runner);
  } finally {
    await runner.release();
  }
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'runtime-test-'));
}

test('main-thread and worker runners compute the same affine outputs in float32, float64 and int64', async () => {
  assert.equal(graphComputesInFloat64(AFFINE), true);
  const bytes = encodeModel(AFFINE);
  const results: Record<string, HostTensor>[] = [];
  for (const thread of ['main', 'worker'] as const) {
    await withRunner({ bytes }, { ...OPTS, thread }, async (r) => {
      assert.deepEqual(r.inputNames, ['xf', 'bf', 'xd', 'bd', 'xi', 'bi']);
      assert.deepEqual(r.outputNames, ['yf', 'yd', 'yi']);
      assert.equal(r.provider, 'cpu');
      results.push(await r.run(affineFeeds()));
    });
  }
  const [main, worker] = results as [Record<string, HostTensor>, Record<string, HostTensor>];
  const refF = affineRef(X, W, B);
  const refI = affineRef(X_INT, W_INT, B_INT);
  for (const out of [main, worker]) {
    assert.equal(out['yf']!.dtype, 'float32');
    assert.ok(out['yf']!.data instanceof Float32Array);
    assert.deepEqual(out['yf']!.shape, [2, 4]);
    // float32 accumulation of 3 products of magnitude < 16: error below 1e-5 absolute.
    [...(out['yf']!.data as Float32Array)].forEach((v, i) => assert.ok(Math.abs(v - refF[i]!) < 1e-5, `yf[${i}]`));
    assert.ok(out['yd']!.data instanceof Float64Array);
    [...(out['yd']!.data as Float64Array)].forEach((v, i) => assert.ok(Math.abs(v - refF[i]!) < 1e-12, `yd[${i}]`));
    assert.ok(out['yi']!.data instanceof BigInt64Array);
    assert.deepEqual([...(out['yi']!.data as BigInt64Array)], refI.map(BigInt));
  }
  assert.deepEqual(worker, main);
});

test('worker runner loads from a path with external data, fetches a subset, and copies feeds', async () => {
  const dir = tmp();
  try {
    // externalizeAbove 0 puts every weight into affine.data next to the model: the worker must resolve it.
    const written = writeModel(AFFINE, join(dir, 'affine.onnx'), { externalizeAbove: 0 });
    assert.ok(written.externalDataPath !== undefined);
    await withRunner({ path: written.onnxPath }, OPTS, async (r) => {
      const feeds = affineFeeds();
      const pending = r.run(feeds, ['yi']);
      // Feeds are copied when posted, so changing them now must not change the result.
      (feeds['xi']!.data as BigInt64Array).fill(0n);
      const out = await pending;
      assert.deepEqual(Object.keys(out), ['yi']);
      assert.deepEqual([...(out['yi']!.data as BigInt64Array)], affineRef(X_INT, W_INT, B_INT).map(BigInt));
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('feeds with a wrong shape, dtype, name or size are rejected naming the input, on both runners', async () => {
  const bytes = encodeModel(AFFINE);
  for (const thread of ['main', 'worker'] as const) {
    await withRunner({ bytes }, { ...OPTS, thread, label: 'affine.onnx' }, async (r) => {
      const cases: [string, Record<string, HostTensor>, RegExp][] = [
        [
          'shape',
          { ...affineFeeds(), xd: hostTensor('float64', [3, 2], new Float64Array(6)) },
          /affine\.onnx: input 'xd' expects shape \[2, 3\], got \[3, 2\]/,
        ],
        [
          'dtype',
          { ...affineFeeds(), bi: hostTensor('int32', [4], new Int32Array(4)) },
          /affine\.onnx: input 'bi' expects int64, got int32/,
        ],
        [
          'data length',
          { ...affineFeeds(), bf: { dtype: 'float32', shape: [4], data: new Float32Array(5) } },
          /affine\.onnx: input 'bf': shape \[4\] has 4 elements but data has 5/,
        ],
        [
          'array class',
          { ...affineFeeds(), xf: { dtype: 'float32', shape: [2, 3], data: new Float64Array(6) } },
          /affine\.onnx: input 'xf': dtype float32 needs a Float32Array, got Float64Array/,
        ],
        ['unknown feed', { ...affineFeeds(), z: hostTensor('float32', [1]) }, /feed 'z' is not an input/],
      ];
      for (const [what, feeds, pattern] of cases) {
        await assert.rejects(r.run(feeds), pattern, `${thread}: ${what}`);
      }
      const { xf: _dropped, ...missing } = affineFeeds();
      await assert.rejects(r.run(missing), /input 'xf' is missing/);
      await assert.rejects(r.run(affineFeeds(), ['nope']), /fetch 'nope' is not an output/);
    });
  }
});

// Reshape(x [6], shape) with a shape fed at run time: a feed that passes validation but that ORT rejects.
const RESHAPE: IrModel = {
  name: 'reshape',
  opset: 17,
  inputs: [
    { name: 'x', dtype: 'float32', shape: [6] },
    { name: 'shape', dtype: 'int64', shape: [2] },
  ],
  outputs: [{ name: 'y', dtype: 'float32', shape: [2, 3] }],
  initializers: [],
  nodes: [node('Reshape', ['x', 'shape'], ['y'])],
};

test('errors raised by ORT inside the worker come back with the original message and the model path', async () => {
  const dir = tmp();
  try {
    const { onnxPath } = writeModel(RESHAPE, join(dir, 'reshape.onnx'));
    const feeds = {
      x: hostTensor('float32', [6], Float32Array.of(1, 2, 3, 4, 5, 6)),
      shape: hostTensor('int64', [2], BigInt64Array.of(4n, 2n)),
    };
    const errors: RunnerError[] = [];
    for (const thread of ['main', 'worker'] as const) {
      // Severity 4 keeps ORT from also printing the expected failure to stderr.
      const opts: OpenRunnerOptions = { intraOpNumThreads: THREADS, thread, logSeverityLevel: 4 };
      await withRunner({ path: onnxPath }, opts, async (r) => {
        const e = await r.run(feeds).then(
          () => assert.fail('reshaping 6 elements to [4, 2] must fail'),
          (err: unknown) => err,
        );
        assert.ok(e instanceof RunnerError, `${thread}: ${String(e)}`);
        errors.push(e);
        // The runner stays usable after a failed run.
        const ok = await r.run({ ...feeds, shape: hostTensor('int64', [2], BigInt64Array.of(2n, 3n)) });
        assert.deepEqual([...(ok['y']!.data as Float32Array)], [1, 2, 3, 4, 5, 6]);
      });
    }
    const [main, worker] = errors as [RunnerError, RunnerError];
    assert.match(worker.originalMessage, /reshape/i);
    assert.equal(worker.originalMessage, main.originalMessage);
    assert.equal(worker.message, `${onnxPath}: ${worker.originalMessage}`);
    assert.equal(worker.model, onnxPath);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a model that cannot be loaded fails openRunner with an error naming the file, on both runners', async () => {
  const dir = tmp();
  try {
    const corrupt = join(dir, 'corrupt.onnx');
    writeFileSync(corrupt, Buffer.from('this is not a protobuf'));
    for (const thread of ['main', 'worker'] as const) {
      for (const path of [corrupt, join(dir, 'missing.onnx')]) {
        await assert.rejects(openRunner({ path }, { intraOpNumThreads: THREADS, thread }), (e: unknown) => {
          assert.ok(e instanceof RunnerError, `${thread}: ${String(e)}`);
          assert.equal(e.model, path);
          assert.ok(e.message.startsWith(`${path}: `));
          return true;
        });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('release ends profiling (writing the trace) and later runs are refused', async () => {
  const dir = tmp();
  try {
    const bytes = encodeModel(AFFINE);
    for (const thread of ['main', 'worker'] as const) {
      const prefix = join(dir, `profile-${thread}`);
      const r = await openRunner({ bytes }, { ...OPTS, thread, profileFilePrefix: prefix });
      await r.run(affineFeeds());
      await r.release();
      await r.release(); // idempotent
      await assert.rejects(r.run(affineFeeds()), /run\(\) after release\(\)/);
      const traces = readdirSync(dir).filter((f) => f.startsWith(`profile-${thread}`) && f.endsWith('.json'));
      assert.equal(traces.length, 1, `${thread}: ${readdirSync(dir).join(', ')}`);
      const events = JSON.parse(readFileSync(join(dir, traces[0]!), 'utf8')) as { name: string }[];
      assert.ok(
        events.some((e) => e.name.includes('MatMul')),
        `${thread}: trace has MatMul kernel events`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// y = x @ W @ W ... (CHAIN MatMuls of 512x512, ~0.27 GFLOP each): a step long enough to see the event loop stall.
const N = 512;
const CHAIN = 24;
const HEAVY: IrModel = (() => {
  // W = I/2 + a small deterministic perturbation keeps |y| bounded over the chain without being trivial.
  const w = new Float32Array(N * N);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < N; j++) w[i * N + j] = (i === j ? 0.5 : 0) + (((i * 31 + j * 17) % 13) - 6) * 1e-4;
  }
  const nodes: IrNode[] = [];
  for (let k = 0; k < CHAIN; k++)
    nodes.push(node('MatMul', [k === 0 ? 'x' : `h${k}`, 'W'], [k === CHAIN - 1 ? 'y' : `h${k + 1}`]));
  return {
    name: 'heavy',
    opset: 17,
    inputs: [{ name: 'x', dtype: 'float32', shape: [N, N] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [N, N] }],
    initializers: [init('W', 'float32', [N, N], w)],
    nodes,
  };
})();

/** Runs `fn` while a 1 ms interval ticks; returns the largest gap between ticks (ms) and fn's duration (ms). */
async function largestTickGap(fn: () => Promise<unknown>): Promise<{ gapMs: number; runMs: number }> {
  let last = performance.now();
  let gap = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    gap = Math.max(gap, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  try {
    await fn();
  } finally {
    clearInterval(timer);
  }
  const end = performance.now();
  // A block at the very end resolves fn before the interval can tick again.
  return { gapMs: Math.max(gap, end - last), runMs: end - t0 };
}

test('a worker runner keeps the event loop responsive while the main-thread runner blocks it', async (t) => {
  const bytes = encodeModel(HEAVY);
  const x = hostTensor(
    'float32',
    [N, N],
    Float32Array.from({ length: N * N }, (_, i) => Math.sin(i)),
  );
  const outputs: HostTensor[] = [];
  const measured: Record<string, { gapMs: number; runMs: number }> = {};
  for (const thread of ['main', 'worker'] as const) {
    await withRunner({ bytes }, { intraOpNumThreads: THREADS, thread }, async (r) => {
      await r.run({ x }); // warm-up: first-run allocations are not what is measured
      measured[thread] = await largestTickGap(async () => outputs.push((await r.run({ x }))['y']!));
    });
  }
  const main = measured['main']!;
  const worker = measured['worker']!;
  t.diagnostic(
    `${CHAIN} MatMuls 512x512: main run ${main.runMs.toFixed(1)} ms, largest tick gap ${main.gapMs.toFixed(1)} ms; ` +
      `worker run ${worker.runMs.toFixed(1)} ms, largest tick gap ${worker.gapMs.toFixed(1)} ms`,
  );
  // The main-thread run happens inside one macrotask: the loop stalls for (almost) the whole step.
  assert.ok(main.runMs >= 20, `main-thread step ${main.runMs} ms is too short to show anything`);
  assert.ok(main.gapMs >= 0.7 * main.runMs, `main-thread gap ${main.gapMs} ms for a ${main.runMs} ms step`);
  // The worker's step runs elsewhere; ticks only wait for message handling and the OS scheduler (up to ~25 ms seen
  // at load average 10 on 2 cores, where the step itself takes 300-400 ms; ~1 ms on a quiet 16-core machine). A
  // blocked loop would show a gap of about the whole step.
  assert.ok(worker.runMs >= 20, `worker step ${worker.runMs} ms is too short to show anything`);
  assert.ok(worker.gapMs < worker.runMs / 3, `worker gap ${worker.gapMs} ms for a ${worker.runMs} ms step`);
  // Same session options and thread count: the two runners compute bit-identical results.
  assert.deepEqual(outputs[1], outputs[0]);
});

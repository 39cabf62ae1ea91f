/**
 * dropoutMask (the inverted-dropout mask built in the graph from dropped positions) against the dense mask built on
 * the host from the same positions, on the CPU provider and on each GPU provider listed in FEDBIOT_TEST_PROVIDERS
 * (the values are 0 or 1/(1-p), so every provider must give them exactly), and its use in a gradient.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Graph,
  dropCapacity,
  dropoutMask,
  drawDropPositions,
  encodeModel,
  gradients,
  mulberry32,
  openRunner,
  ops as O,
  type ExecutionProvider,
} from '../src/index.js';

const SHAPE = [3, 7, 11];
const N = 3 * 7 * 11;
const PROVIDERS: ExecutionProvider[] = [
  'cpu',
  ...(process.env['FEDBIOT_TEST_PROVIDERS'] ?? '').split(',').filter((p): p is ExecutionProvider => p !== ''),
];

for (const provider of PROVIDERS)
  for (const p of [0.05, 0.5]) {
    test(`dropoutMask on ${provider}, p ${p}: equals the host mask of the same positions; the gradient is masked`, async () => {
      const cap = dropCapacity(N, p);
      const g = new Graph('dropout-mask');
      const positions = g.input('positions', 'int32', [cap]);
      const x = g.input('x', 'float32', SHAPE);
      const mask = dropoutMask(positions, SHAPE, p, 'float32');
      const loss = O.sumAll(O.mul(O.mul(x, x), mask)); // d/dx = 2 x mask: the mask reaches the backward pass
      const [gx] = gradients(loss, [x]);
      g.output(O.identity(mask), 'mask');
      g.output(gx!, 'gx');
      const runner = await openRunner(
        { bytes: encodeModel(g.toIr()) },
        { thread: 'main', intraOpNumThreads: 1, provider, fallbackToCpu: false },
      );
      try {
        const drops = new Int32Array(cap);
        const count = drawDropPositions(mulberry32(11), N, p, drops);
        assert.ok(count > 0 && count < N);
        const want = new Float32Array(N).fill(Math.fround(1 / (1 - p)));
        for (let i = 0; i < count; i++) want[drops[i]!] = 0;
        const xs = Float32Array.from({ length: N }, (_, i) => i - 100);
        const out = await runner.run({
          positions: { dtype: 'int32', shape: [cap], data: drops },
          x: { dtype: 'float32', shape: SHAPE, data: xs },
        });
        assert.deepEqual(out['mask']!.data, want, 'mask');
        assert.deepEqual(
          out['gx']!.data,
          want.map((m, i) => Math.fround(Math.fround(2 * xs[i]!) * m)),
          'd sum(x² mask) / dx = 2 x mask',
        );
        assert.equal(
          (out['mask']!.data as Float32Array).filter((v) => v === 0).length,
          count,
          'only the drawn positions are dropped (the padding slot is cut off)',
        );
      } finally {
        await runner.release();
      }
    });
  }

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientTrainingSeed, clientSeed, resolveJobSpec } from '../../libs/fedbiot/src/index.js';

test('clients with ids of equal length get different training seeds, every round', () => {
  for (let round = 0; round < 20; round++) {
    const seeds = ['add', 'sub', 'mul'].map((id) => clientTrainingSeed(0, round, id));
    assert.equal(new Set(seeds).size, 3, `round ${round}: ${seeds.join(', ')}`);
    for (const s of seeds) assert.ok(Number.isSafeInteger(s) && s >= 0 && s < 2 ** 31);
  }
  assert.notEqual(clientTrainingSeed(0, 0, 'add'), clientTrainingSeed(0, 1, 'add'));
  assert.notEqual(clientTrainingSeed(0, 0, 'add'), clientTrainingSeed(1, 0, 'add'));
  assert.equal(clientTrainingSeed(7, 3, 'add'), clientTrainingSeed(7, 3, 'add'));
});

test('the distributed trainer derives the same seed as the standalone job', () => {
  const spec = resolveJobSpec({ job: { seed: 5 } }, 'test');
  assert.equal(clientSeed(spec, 4, 'mul'), clientTrainingSeed(5, 4, 'mul'));
});

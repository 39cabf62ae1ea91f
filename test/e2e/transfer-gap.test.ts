/**
 * scripts/transfer-gap.mjs on real run folders: two tiny offsite-tuning jobs on the demo model (no alignment, the
 * emulator LoRA left at PEFT's zero init), one without layer dropout, whose emulator IS the full model's block (the
 * script must then find no gap at all: right layers compared, right LoRAs attached), and one at dropout 0.5 (a
 * real gap, larger on the clients' questions' answer tokens than zero).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { resolveJobSpec, runJob } from '../../libs/fedbiot/src/index.js';
import { demoJobRawSpec, tmpWithDemoFederation } from '../support/federation.js';
import { repoRoot } from '../support/paths.js';

interface Gap {
  l2: number;
  kl: number;
  klAnswer?: number | null;
  tokens: number;
}
interface GapRow {
  method: string;
  public: Gap;
  test: Gap;
  clients: Record<string, Gap>;
}

let tmp = '';
before(async () => {
  tmp = await tmpWithDemoFederation('transfer-gap-');
});
after(() => rmSync(tmp, { recursive: true, force: true }));

async function gapOfRun(id: string, dropRate: number): Promise<GapRow> {
  const spec = resolveJobSpec(
    demoJobRawSpec(tmp, id, { job: { method: 'offsite-tuning' }, split: { dropRate, adapterBottom: 0 } }),
    'transfer-gap test',
  );
  const { runDir } = await runJob(spec, { log: () => {} });
  const out = join(tmp, `${id}-gap.json`);
  const r = spawnSync(
    process.execPath,
    [join(repoRoot, 'scripts', 'transfer-gap.mjs'), runDir, '--public', '8', '--json', out],
    {
      cwd: repoRoot,
      encoding: 'utf8',
    },
  );
  assert.equal(r.status, 0, r.stderr);
  const rows = JSON.parse(readFileSync(out, 'utf8')) as GapRow[];
  assert.equal(rows.length, 1);
  return rows[0]!;
}

test('transfer-gap: no gap when nothing is dropped, a real one at dropout 0.5, on public text and client questions', async () => {
  const same = await gapOfRun('no-drop', 0);
  assert.equal(same.method, 'offsite-tuning');
  assert.deepEqual(Object.keys(same.clients).toSorted(), ['add', 'mul', 'sub']);
  for (const g of [same.public, same.test, ...Object.values(same.clients)]) {
    assert.ok(g.tokens > 0);
    // The same layers and LoRAs in two sessions: equal up to float32 summation order.
    assert.ok(g.l2 < 1e-10 && Math.abs(g.kl) < 1e-5, JSON.stringify(g));
  }
  const dropped = await gapOfRun('drop-half', 0.5);
  for (const g of [dropped.public, dropped.test]) assert.ok(g.l2 > 1e-3 && g.kl > 1e-3, JSON.stringify(g));
  for (const g of Object.values(dropped.clients)) assert.ok((g.klAnswer ?? 0) > 1e-3, JSON.stringify(g));
});

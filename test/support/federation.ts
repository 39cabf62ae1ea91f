import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDemoFederation, type DemoFederationOptions } from '../../libs/data/src/index.js';
import { repoRoot } from './paths.js';

/** The demo federation the job tests train on: 48 training and 8 test examples per client, a 60 kB public corpus. */
export const SMALL_DEMO_FEDERATION: DemoFederationOptions = {
  seed: 5,
  trainPerClient: 48,
  testPerClient: 8,
  globalTestPerTask: 2,
  corpusBytes: 60_000,
};

/**
 * A fresh temporary folder (named `<prefix>XXXXXX`) with a demo federation written to its `folder` (`federation/`
 * unless told); returns the folder, which the caller removes (usually in `after`).
 */
export async function tmpWithDemoFederation(
  prefix: string,
  opts: DemoFederationOptions = SMALL_DEMO_FEDERATION,
  folder = 'federation',
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await writeDemoFederation(join(dir, folder), opts);
  return dir;
}

/** The top-level sections of a raw job spec, each a plain object. */
export type RawSpecSections = Record<string, Record<string, unknown>>;

/**
 * The raw spec of a job on the committed demo model and the demo federation in `tmp`/federation, writing its runs
 * to `tmp`/runs, with the settings of test/e2e/fedbiot-job.test.ts (3 local steps, 2 rounds, 1 pre-round, no
 * baseline). Each section of `sections` is merged into the default one of that name (or added), so a test states
 * only where its job differs.
 */
export function demoJobRawSpec(tmp: string, id: string, sections: RawSpecSections = {}): RawSpecSections {
  const defaults: RawSpecSections = {
    job: { id, seed: 3, rounds: 2, outDir: join(tmp, 'runs') },
    model: { checkpoint: join(repoRoot, 'models', 'demo-llama'), threads: 1 },
    data: { federation: join(tmp, 'federation'), maxLength: 96 },
    clients: { localSteps: 3, batchSize: 4, lr: 5e-3 },
    alignment: { preRounds: 1, stepsPerRound: 2, batchSize: 4 },
    eval: { maxNewTokens: 4 },
    baselines: { offsiteTuning: false, localOnly: false },
  };
  const out = { ...defaults };
  for (const [name, section] of Object.entries(sections)) out[name] = { ...defaults[name], ...section };
  return out;
}

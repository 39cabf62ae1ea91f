import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDemoFederation, type DemoFederationOptions } from '../../libs/data/src/index.js';

/** The demo federation the job tests train on: 48 training and 8 test examples per client, a 60 kB public corpus. */
export const SMALL_DEMO_FEDERATION: DemoFederationOptions = {
  seed: 5,
  trainPerClient: 48,
  testPerClient: 8,
  globalTestPerTask: 2,
  corpusBytes: 60_000,
};

/**
 * A fresh temporary folder (named `<prefix>XXXXXX`) with a demo federation written to its `federation/`; returns
 * the folder, which the caller removes (usually in `after`).
 */
export async function tmpWithDemoFederation(
  prefix: string,
  opts: DemoFederationOptions = SMALL_DEMO_FEDERATION,
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await writeDemoFederation(join(dir, 'federation'), opts);
  return dir;
}

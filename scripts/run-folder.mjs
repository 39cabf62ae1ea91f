// What the run-folder scripts (knowledge-by-relation.mjs, transfer-gap.mjs) read from a finished run
// (runs/<experiment>/runs/<cell>): its job spec and its last checkpoint. Imports from dist/ (run `npm run build`).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
const dist = join(import.meta.dirname, '..', 'dist', 'libs');
const { resolveJobSpec } = await import(join(dist, 'fedbiot/src/job-spec.js'));
const { loadCheckpoint } = await import(join(dist, 'fedbiot/src/run-dir.js'));

/** The run's resolved job spec (config.resolved.json). */
export function readRunSpec(run) {
  const resolved = JSON.parse(readFileSync(join(run, 'config.resolved.json'), 'utf8'));
  // The resolved config names the generated demo federation's folder (its manifest names the public corpus it was
  // generated with); the knowledge-demo-only settings that chose it go.
  delete resolved.data.publicCorpus;
  delete resolved.data.knowledgeClients;
  return resolveJobSpec(resolved, run);
}

/** The run's last checkpoint (checkpoints/round-*): its folder name and its contents. */
export async function lastCheckpoint(run) {
  const ckDir = join(run, 'checkpoints');
  const name = readdirSync(ckDir)
    .filter((d) => d.startsWith('round-'))
    .toSorted()
    .at(-1);
  if (name === undefined) throw new Error(`${run}: no checkpoint in ${ckDir}`);
  return { name, checkpoint: await loadCheckpoint(join(ckDir, name)) };
}

/**
 * `npm run pretrain [-- --demo deep|arith --steps N --seed S --out DIR --threads T]`: reproduces a built-in demo base
 * model by full-parameter training with this project's engine. `deep` (the default) writes models/demo-deep, the
 * default job's 12-layer model that has memorised the knowledge demo's world; `arith` writes models/demo-llama.
 * Deterministic for a given seed, step count and thread count (float summation order depends on threads).
 */
import { join } from 'node:path';
import { cleanWorkDir, pretrainDeepDemoModel, pretrainDemoModel } from '../libs/fedbiot/src/index.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const demo = opt('demo') ?? 'deep';
if (demo !== 'deep' && demo !== 'arith') {
  console.error(`--demo must be deep or arith, got ${demo}`);
  process.exit(2);
}
const outDir = opt('out') ?? (demo === 'deep' ? 'models/demo-deep' : 'models/demo-llama');
const workDir = opt('work') ?? join('.cache', `pretrain-${demo}`);
await cleanWorkDir(workDir);
const r = await (demo === 'deep' ? pretrainDeepDemoModel : pretrainDemoModel)({
  outDir,
  workDir,
  seed: Number(opt('seed') ?? 0),
  ...(opt('steps') ? { steps: Number(opt('steps')) } : {}),
  ...(opt('threads') ? { threads: Number(opt('threads')) } : {}),
  ...(opt('provider') ? { provider: opt('provider') as 'cpu' | 'webgpu' | 'cuda' } : {}),
});
console.log(`\n| steps | tokens | train loss | held-out perplexity | parameters | seconds |`);
console.log(`|---|---|---|---|---|---|`);
console.log(
  `| ${r.steps} | ${r.tokens} | ${r.trainLoss.toFixed(3)} | ${r.heldOutPerplexity.toFixed(2)} | ${r.parameters} | ${r.seconds.toFixed(0)} |`,
);
console.log(`\nwrote ${outDir}`);

/**
 * `npm run pretrain [-- --steps N --seed S --out DIR]`: reproduces the built-in demo base model (models/demo-llama)
 * by full-parameter training with this project's engine on the generated public corpus.
 */
import { join } from 'node:path';
import { cleanWorkDir, pretrainDemoModel } from '../libs/fedbiot/src/demo-model.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const outDir = opt('out') ?? 'models/demo-llama';
const workDir = opt('work') ?? join('.cache', 'pretrain');
await cleanWorkDir(workDir);
const r = await pretrainDemoModel({
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

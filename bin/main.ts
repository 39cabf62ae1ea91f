/**
 * The main job: `npm start [-- --config job.yaml] [--set path=value ...] [--resume --set job.id=ID]`.
 * Without a config it runs the built-in demo (DEMO_JOB): FedBiOT on the deep demo model and the knowledge
 * federation, with offsite-tuning (same adapter layers) and local-only baselines. The last line printed is the run
 * folder.
 */
import { DEMO_JOB } from '../libs/fedbiot/src/demo-model.js';
import { applyOverrides, loadJobSpec, resolveJobSpec } from '../libs/fedbiot/src/job-spec.js';
import { runJob } from '../libs/fedbiot/src/job.js';

const args = process.argv.slice(2);
let config: string | undefined;
const overrides: string[] = [];
let resume = false;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--config') config = args[++i];
  else if (a === '--set') overrides.push(args[++i] ?? '');
  else if (a.startsWith('--set=')) overrides.push(a.slice(6));
  else if (a === '--resume') resume = true;
  else if (a === '--help' || a === '-h') {
    console.log('usage: npm start -- [--config job.yaml] [--set section.field=value ...] [--resume]');
    process.exit(0);
  } else {
    console.error(`unknown argument ${a} (see --help)`);
    process.exit(2);
  }
}
try {
  const spec = config
    ? await loadJobSpec(config, overrides)
    : resolveJobSpec(applyOverrides(DEMO_JOB, overrides, 'command line'), 'built-in demo job');
  const r = await runJob(spec, { resume });
  console.log(r.runDir);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
}

/**
 * The main job: `npm start [-- --config job.yaml] [--set path=value ...] [--resume | --overwrite]`.
 * Without a config it runs the built-in demo (DEMO_JOB): FedBiOT on the deep demo model and the knowledge
 * federation, with offsite-tuning (same adapter layers) and local-only baselines. The last line printed is the run
 * folder.
 */
import {
  DEMO_JOB,
  applyOverrides,
  loadJobSpec,
  resolveJobSpec,
  runJob,
  logLevelFromEnv,
} from '../libs/fedbiot/src/index.js';

const args = process.argv.slice(2);
let config: string | undefined;
const overrides: string[] = [];
let resume = false;
let overwrite = false;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--config') config = args[++i];
  else if (a === '--set') overrides.push(args[++i] ?? '');
  else if (a.startsWith('--set=')) overrides.push(a.slice(6));
  else if (a === '--resume') resume = true;
  else if (a === '--overwrite') overwrite = true;
  else if (a === '--help' || a === '-h') {
    console.log(`usage: npm start -- [--config job.yaml] [--set section.field=value ...] [--resume | --overwrite]

Runs a federated job in one process: base evaluation, the job's method (FedBiOT by default), the enabled
baselines, then results.json, report.html, the adapter (PEFT) and a merged model in <job.outDir>/<job.id>/.
Without --config it runs the built-in demo job. The last line printed is the run folder.

  --config FILE   job spec (YAML or JSON; README "Configuration"); relative paths in it are relative to FILE
  --set P=V       override one field, e.g. --set job.rounds=3 --set data.partition=iid (repeatable)
  --resume        continue the run folder of job.id from its last completed round (same config only)
  --overwrite     delete the run folder of job.id and start again

Own data: docs/own-data.md.`);
    process.exit(0);
  } else {
    console.error(`unknown argument ${a} (see --help)`);
    process.exit(2);
  }
}
try {
  logLevelFromEnv(); // a bad LOG_LEVEL is named now, not ignored
  const spec = config
    ? await loadJobSpec(config, overrides)
    : resolveJobSpec(applyOverrides(DEMO_JOB, overrides, 'command line'), 'built-in demo job');
  const r = await runJob(spec, { resume, overwrite });
  console.log(r.runDir);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
}

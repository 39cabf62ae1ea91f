/**
 * `node dist/bin/jobs.js <status|delete> --job ID [--nats URL] [--force]`: a distributed job's NATS resources.
 * A finished job leaves its work-queue stream, state KV bucket and object-store buckets (package, blobs, owner
 * state, one per client's updates) on the server; `delete` removes them, `status` says where the job stands.
 * Credentials come from the environment like the services' (NATS_CREDS_FILE, NATS_USER + NATS_PASSWORD, TLS).
 */
import {
  connectTransport,
  deleteJobResources,
  streamExists,
  JobStateSchema,
  type JobState,
  JOB_STATE_KEY,
  StateStore,
  ID_PATTERN,
  stateBucketName,
} from '../libs/protocol/src/index.js';
import { DEFAULT_NATS_URL } from '../services/common/env.js';
import type { NatsConnection } from '@nats-io/transport-node';

const HELP = `usage: node dist/bin/jobs.js <command> --job ID [--nats URL] [--force]

A distributed job's resources on NATS (JetStream streams and buckets named after the job id).

  status   where the job stands (from its state bucket): status, rounds completed
  delete   delete the job's work queue, state bucket and object-store buckets; refuses while the job is
           created, running or paused unless --force (a running aggregator would fail mid-round)

  --job ID      the job id (job.id of the job spec)
  --nats URL    the NATS server, default NATS_URL or ${DEFAULT_NATS_URL}
  --force       delete whatever the job's status`;

class UsageError extends Error {}

function parse(argv: readonly string[]): { command: string; job: string; nats: string; force: boolean } {
  const [command, ...rest] = argv;
  if (command !== 'status' && command !== 'delete') throw new UsageError(`unknown command ${command ?? '(none)'}`);
  let job: string | undefined;
  let nats = process.env['NATS_URL'] ?? DEFAULT_NATS_URL;
  let force = false;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--force') force = true;
    else if (a === '--job' || a === '--nats') {
      const v = rest[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      if (a === '--job') job = v;
      else nats = v;
    } else throw new UsageError(`unknown option ${a}`);
  }
  if (job === undefined) throw new UsageError('--job ID is required');
  if (!ID_PATTERN.test(job)) throw new UsageError(`--job: "${job}" is not a job id (letters, digits, "_", "-")`);
  return { command, job, nats, force };
}

/** The job's state, without creating its bucket when there is none (StateStore.open would). */
async function jobState(nc: NatsConnection, job: string): Promise<JobState | null | undefined> {
  const bucket = stateBucketName(job);
  if (!(await streamExists(nc, `KV_${bucket}`))) return undefined;
  const store = await StateStore.open(nc, { bucket });
  return (await store.get(JOB_STATE_KEY, JobStateSchema))?.value ?? null;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.length === 0 || args.includes('--help') || args.includes('-h')) {
    console.log(HELP);
    process.exit(args.length === 0 ? 2 : 0);
  }
  const { command, job, nats, force } = parse(args);
  const nc = await connectTransport(nats);
  try {
    const state = await jobState(nc, job);
    const where =
      state === undefined
        ? 'no state bucket'
        : state === null
          ? 'a state bucket without job state'
          : `${state.status}, ${state.lastCompletedRound + 1}/${state.totalRounds} rounds completed`;
    if (command === 'status') {
      console.log(`job ${job}: ${where}`);
      return;
    }
    if (state && ['created', 'running', 'paused'].includes(state.status) && !force) {
      throw new Error(
        `job ${job} is ${state.status} (${where}); deleting its resources would break it: stop it first, or --force`,
      );
    }
    const deleted = await deleteJobResources(nc, job);
    console.log(
      deleted.length === 0
        ? `job ${job}: nothing to delete (no stream or bucket of this job on ${nats})`
        : `job ${job} (${where}): deleted ${deleted.length} stream(s): ${deleted.join(', ')}`,
    );
  } finally {
    await nc.close();
  }
}

main().catch((e: unknown) => {
  if (e instanceof UsageError) {
    console.error(`error: ${e.message}\n\n${HELP}`);
    process.exit(2);
  }
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
});

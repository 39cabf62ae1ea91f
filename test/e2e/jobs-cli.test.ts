/**
 * The jobs CLI against a private NATS server: it tells where a job stands and deletes a finished job's streams
 * and buckets, and refuses to delete a running job's without --force.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import {
  connectTransport,
  streamExists,
  JobStateSchema,
  PROTOCOL_VERSION,
  JOB_STATE_KEY,
  StateStore,
  stateBucketName,
} from '../../libs/protocol/src/index.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { repoRoot } from '../support/paths.js';

let nats: PrivateNats | undefined;
let NATS_URL = '';
before(async () => {
  nats = await startPrivateNats(() => '');
  NATS_URL = nats.url;
});
after(async () => {
  await nats?.stop();
});
const cli = (...args: string[]) =>
  spawnSync(process.execPath, [join(repoRoot, 'dist', 'bin', 'jobs.js'), ...args, '--nats', NATS_URL], {
    encoding: 'utf8',
  });

test('status and delete of a job: a running job is kept unless --force, a finished one is removed', async () => {
  const job = `jobs-cli-${process.pid}-${Date.now().toString(36)}`;
  const nc = await connectTransport(NATS_URL);
  try {
    const store = await StateStore.open(nc, { bucket: stateBucketName(job) });
    const state = (status: 'running' | 'completed') => ({
      protocolVersion: PROTOCOL_VERSION,
      jobId: job,
      status,
      totalRounds: 2,
      lastCompletedRound: status === 'running' ? 0 : 1,
      model: null,
      adapterLora: null,
      emulatorLora: null,
      message: null,
      updatedAt: Date.now(),
    });
    await store.put(JOB_STATE_KEY, JobStateSchema, state('running'));
    const s = cli('status', '--job', job);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(s.stdout.trim(), `job ${job}: running, 1/2 rounds completed`);
    const refused = cli('delete', '--job', job);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /is running .*stop it first, or --force/);
    assert.ok(await streamExists(nc, `KV_${stateBucketName(job)}`), 'kept');

    await store.put(JOB_STATE_KEY, JobStateSchema, state('completed'));
    const d = cli('delete', '--job', job);
    assert.equal(d.status, 0, d.stderr);
    assert.match(
      d.stdout,
      new RegExp(`job ${job} \\(completed, 2/2 rounds completed\\): deleted 1 stream\\(s\\): KV_`),
    );
    assert.equal(await streamExists(nc, `KV_${stateBucketName(job)}`), false);
    assert.match(cli('delete', '--job', job).stdout, /nothing to delete/);
    assert.match(cli('status', '--job', job).stdout, /no state bucket/);
    assert.equal(await streamExists(nc, `KV_${stateBucketName(job)}`), false, 'status creates nothing');
  } finally {
    await nc.close();
  }
});

test('usage errors name the problem', () => {
  const r = cli('remove', '--job', 'x');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command remove/);
  assert.match(cli('delete').stderr, /--job ID is required/);
  assert.match(cli('delete', '--job', 'a b').stderr, /"a b" is not a job id/);
});

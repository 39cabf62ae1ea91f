/**
 * A service that cannot start says why in one JSON log line on stdout (what a crash-looping pod's `kubectl logs`
 * shows) and exits 1: no stack trace. Real service processes; the credentials case fails before any NATS connection.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { repoRoot } from '../support/paths.js';
import { tmpWithDemoFederation } from '../support/federation.js';

interface Exit {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runService(main: string, env: Record<string, string>): Promise<Exit> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fileURLToPath(new URL(`../../services/${main}`, import.meta.url))], {
      env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The one start-up failure line: exit 1, nothing on stderr, and every stdout line is JSON. */
function failureLine(r: Exit): Record<string, unknown> {
  assert.equal(r.code, 1, `exit code; stdout ${r.stdout}; stderr ${r.stderr}`);
  assert.equal(r.stderr.trim(), '', 'no stack trace on stderr');
  const lines = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const failed = lines.filter((l) => l['msg'] === 'service failed to start');
  assert.equal(failed.length, 1, r.stdout);
  assert.equal(failed[0]!['level'], 'error');
  return failed[0]!;
}

test('a missing job spec file: one error line naming the file, exit 1 (every service)', async () => {
  for (const main of [
    'aggregator/main.js',
    'client-trainer/main.js',
    'evaluator/main.js',
    'server-alignment/main.js',
  ]) {
    const line = failureLine(
      await runService(main, { NATS_URL: 'nats://127.0.0.1:1', JOB_SPEC: '/nonexistent/job.yaml', HTTP_PORT: '0' }),
    );
    assert.equal(line['error'], 'JobSpecError', main);
    assert.match(JSON.stringify(line['issues']), /\/nonexistent\/job\.yaml/, main);
  }
});

test('an unreadable credentials file: one error line naming NATS_CREDS_FILE and the file, exit 1', async () => {
  const tmp = await tmpWithDemoFederation('fedbiot-startup-');
  try {
    const spec = join(tmp, 'job.json');
    writeFileSync(
      spec,
      JSON.stringify({
        job: { id: 'startup-errors', rounds: 1, outDir: join(tmp, 'runs') },
        model: { checkpoint: join(repoRoot, 'models', 'demo-llama') },
        data: { federation: join(tmp, 'federation') },
      }),
    );
    const line = failureLine(
      await runService('client-trainer/main.js', {
        NATS_URL: 'nats://127.0.0.1:1',
        JOB_SPEC: spec,
        HTTP_PORT: '0',
        CLIENT_ID: 'add',
        NATS_CREDS_FILE: join(tmp, 'missing.creds'),
      }),
    );
    assert.equal(line['error'], 'CredentialsError');
    assert.equal(line['variable'], 'NATS_CREDS_FILE');
    assert.match(String(line['reason']), /missing\.creds/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('transient NATS errors are retried until the deadline; content errors are not', async () => {
  const { isTransientNatsError, retryTransient } = await import('../../services/common/requests.js');
  assert.ok(isTransientNatsError(Object.assign(new Error('TIMEOUT'), { code: 'TIMEOUT' })));
  assert.ok(isTransientNatsError(new Error('jetstream is not enabled')));
  assert.ok(isTransientNatsError(Object.assign(new Error('no responders'), { code: '503' })));
  assert.ok(!isTransientNatsError(new Error('sha256 mismatch for blob x')));
  let calls = 0;
  const v = await retryTransient(
    async () => {
      if (++calls < 3) throw new Error('request timed out');
      return 'ok';
    },
    Date.now() + 5_000,
    10,
  );
  assert.equal(v, 'ok');
  assert.equal(calls, 3);
  calls = 0;
  await assert.rejects(
    retryTransient(async () => {
      calls++;
      throw new Error('size 2 GiB over the limit');
    }, Date.now() + 5_000),
    /over the limit/,
  );
  assert.equal(calls, 1, 'a content error is not retried');
  await assert.rejects(
    retryTransient(
      async () => {
        throw new Error('timeout');
      },
      Date.now() + 50,
      10,
    ),
    /timeout/,
  );
});

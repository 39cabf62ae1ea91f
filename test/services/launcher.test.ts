/**
 * The local launcher (bin/services.ts) restarts a service that dies instead of stopping the job: a trainer child is
 * SIGKILLed while it trains; the launcher restarts it, its task is redelivered, and with --exit-when-done the
 * launcher exits 0 once the aggregator completed the job. A private nats-server; the demo model; about a minute.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeDemoFederation } from '../../libs/data/src/index.js';
import { startPrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { repoRoot } from '../support/paths.js';
import { onJsonLines } from '../support/json-lines.js';

/** A 1-round job on a small demo federation in `tmp`; returns the path of its spec file. */
async function writeLauncherJob(tmp: string, jobId: string): Promise<string> {
  await writeDemoFederation(join(tmp, 'federation'), {
    seed: 5,
    trainPerClient: 24,
    testPerClient: 4,
    globalTestPerTask: 1,
    corpusBytes: 30_000,
  });
  const specFile = join(tmp, 'job.json');
  writeFileSync(
    specFile,
    JSON.stringify({
      job: { id: jobId, seed: 3, rounds: 1, outDir: join(tmp, 'runs') },
      model: { checkpoint: join(repoRoot, 'models', 'demo-llama'), threads: 1 },
      data: { federation: join(tmp, 'federation'), maxLength: 64 },
      clients: { localSteps: 2, batchSize: 4 },
      alignment: { preRounds: 1, stepsPerRound: 1, batchSize: 4 },
      aggregation: { deadlineMs: 120_000 },
      eval: { maxNewTokens: 2, mode: 'simulation' },
      baselines: { offsiteTuning: false, localOnly: false },
    }),
  );
  return specFile;
}

/**
 * bin/services.ts on the job in `specFile` over `natsUrl`, with `trainers` trainer replicas, ports from `portBase`,
 * caches under `tmp`/cache, `--exit-when-done` and `args`; `env` adds variables. Its stdout is piped (JSON lines).
 */
function spawnLauncher(o: {
  specFile: string;
  natsUrl: string;
  tmp: string;
  trainers: number;
  portBase: number;
  args?: readonly string[];
  env?: Record<string, string>;
}): ChildProcess {
  return spawn(
    process.execPath,
    [
      fileURLToPath(new URL('../../bin/services.js', import.meta.url)),
      '--trainers',
      String(o.trainers),
      '--port-base',
      String(o.portBase),
      '--exit-when-done',
      ...(o.args ?? []),
    ],
    {
      env: {
        ...process.env,
        JOB_SPEC: o.specFile,
        NATS_URL: o.natsUrl,
        ...o.env,
        FEDBIOT_CACHE: join(o.tmp, 'cache'),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
}

test('a trainer killed under the launcher is restarted and the job completes (exit 0)', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'fedbiot-launcher-'));
  const nats = await startPrivateNats(() => '');
  try {
    const jobId = `launch-${process.pid}`;
    const specFile = await writeLauncherJob(tmp, jobId);
    const portBase = 20_000 + (process.pid % 20_000);
    const launcher = spawnLauncher({
      specFile,
      natsUrl: nats.url,
      tmp,
      trainers: 2,
      portBase,
      env: { ACK_WAIT_MS: '3000' },
    });
    const lines: Record<string, unknown>[] = [];
    const pids = new Map<string, number>();
    let killed: string | undefined;
    onJsonLines(launcher.stdout!, (r) => {
      lines.push(r);
      if (r['service'] === 'launcher' && r['msg'] === 'started') pids.set(String(r['child']), Number(r['pid']));
      // The first trainer to train is killed mid-task, once.
      if (r['msg'] === 'training' && !killed && typeof r['service'] === 'string') {
        killed = r['service'];
        process.kill(pids.get(killed)!, 'SIGKILL');
      }
    });
    const code = await new Promise<number | null>((resolve) => launcher.once('exit', (c) => resolve(c)));
    const launcherSaid = (msg: string): Record<string, unknown>[] =>
      lines.filter((r) => r['service'] === 'launcher' && r['msg'] === msg);
    assert.ok(killed, 'a trainer was killed while training');
    assert.deepEqual(
      launcherSaid('restarting').map((r) => r['child']),
      [killed],
      'the launcher restarted the killed trainer, and nothing else',
    );
    assert.equal(launcherSaid('started').filter((r) => r['child'] === killed).length, 2);
    assert.ok(
      lines.some((r) => r['service'] === 'aggregator' && r['msg'] === 'job completed'),
      'the aggregator completed the job',
    );
    assert.equal(code, 0, 'the launcher exits with the aggregator status');
    console.log(`launcher: killed ${killed}, restarted it; job completed, exit ${code}`);
  } finally {
    await nats.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('--exit-when-done --keep-dashboard: the other services stop, the dashboard stays up showing the finished run; SIGTERM ends it', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'fedbiot-launcher-keep-'));
  const nats = await startPrivateNats(() => '');
  try {
    const jobId = `keep-${process.pid}`;
    const specFile = await writeLauncherJob(tmp, jobId);
    const portBase = 20_000 + ((process.pid + 7919) % 20_000);
    const launcher = spawnLauncher({
      specFile,
      natsUrl: nats.url,
      tmp,
      trainers: 1,
      portBase,
      args: ['--keep-dashboard'],
    });
    const lines: Record<string, unknown>[] = [];
    const exited = new Promise<number | null>((resolve) => launcher.once('exit', (c) => resolve(c)));
    const done = new Promise<Record<string, unknown>>((resolve) =>
      onJsonLines(launcher.stdout!, (r) => {
        lines.push(r);
        if (r['service'] === 'launcher' && String(r['msg']).startsWith('job done')) resolve(r);
      }),
    );
    const said = await Promise.race([done, exited.then(() => null)]);
    assert.ok(said, 'the launcher said the job is done and kept the dashboard');
    assert.equal(said['url'], `http://127.0.0.1:${portBase + 2}/dashboard`);
    // The other children stop; the evaluator does not.
    const stoppedOthers = async (): Promise<string[]> => {
      for (let i = 0; i < 100; i++) {
        const gone = lines.filter((r) => r['service'] === 'launcher' && r['msg'] === 'exited').map((r) => r['child']);
        if (gone.length >= 3) return gone.map(String).toSorted();
        await new Promise((r) => setTimeout(r, 100));
      }
      return [];
    };
    assert.deepEqual(await stoppedOthers(), ['aggregator', 'client-trainer-1', 'server-alignment']);
    const data = (await (await fetch(`http://127.0.0.1:${portBase + 2}/dashboard/data`)).json()) as {
      job: { status: string; run: { dir: string; results: string; adapter: string } | null };
    };
    assert.equal(data.job.status, 'completed');
    const runDir = join(tmp, 'runs', jobId);
    assert.equal(data.job.run?.dir, runDir);
    assert.equal(data.job.run?.results, join(runDir, 'results.json'));
    assert.ok(existsSync(data.job.run.results) && existsSync(join(data.job.run.adapter, 'adapter_config.json')));
    launcher.kill('SIGTERM');
    assert.equal(await exited, 0, "the launcher exits with the aggregator's status once the dashboard stopped");
  } finally {
    await nats.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
});

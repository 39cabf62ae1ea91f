import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CONFIG_FILE,
  MetricsLog,
  createRunDir,
  discardUnstartedRun,
  listCheckpoints,
  loadLatestCheckpoint,
  readMetrics,
  saveCheckpoint,
} from '../src/run-dir.js';
import { RunDirError } from '../src/errors.js';
import { withTmp as withTmpIn } from '../../../test/support/tmp.js';

const withTmp = (fn: (dir: string) => Promise<void>): Promise<void> => withTmpIn('fedbiot-rundir-', fn);

const state = (round: number) => ({
  round,
  json: { round, sampler: { seed: 3 }, note: `after round ${round}` },
  tensors: new Map([
    ['adapter.lora_A', Float32Array.of(round, -1.5, 3.25e-8)],
    ['adapter.lora_B', Float32Array.of(2 ** -126, round * 10)],
    ['empty', new Float32Array(0)],
  ]),
});

test('createRunDir: generated ids are unique, a given id is used, config.resolved.json is written', async () => {
  await withTmp(async (out) => {
    const config = { job: { rounds: 3 }, lora: { r: 8 } };
    const ids = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const r = await createRunDir(out, undefined, config);
      assert.match(r.id, /^\d{8}-\d{6}-[0-9a-f]{6}$/);
      ids.add(r.id);
    }
    assert.equal(ids.size, 5);
    const named = await createRunDir(out, 'exp-1', config);
    assert.deepEqual(named, { id: 'exp-1', dir: join(out, 'exp-1'), resumed: false });
    assert.deepEqual(JSON.parse(await readFile(join(named.dir, CONFIG_FILE), 'utf8')), config);
    await assert.rejects(
      createRunDir(out, 'exp-1', config),
      (e: unknown) =>
        e instanceof RunDirError &&
        /exp-1 already exists \(job id "exp-1"; it holds no checkpoint.*--resume continues it, --overwrite deletes it/.test(
          e.message,
        ),
    );
    assert.equal((await createRunDir(out, 'exp-1', config, { resume: true })).resumed, true);
    await assert.rejects(
      createRunDir(out, 'exp-1', { job: { rounds: 4 }, lora: { r: 8 } }, { resume: true }),
      /cannot resume with a different configuration .*1 field changed:\n  job\.rounds: was 3, now 4\n.*--overwrite/s,
    );
    await assert.rejects(
      createRunDir(out, 'exp-1', { job: { rounds: 4 }, lora: { r: 16 }, data: 'x' }, { resume: true }),
      /3 fields changed:\n  job\.rounds: was 3, now 4\n  lora\.r: was 8, now 16\n  data: was \(absent\), now "x"/,
    );
    await assert.rejects(createRunDir(out, '../escape', config), /not a safe folder name/);
  });
});

test('createRunDir overwrite: replaces an earlier run folder, never a folder that is not one', async () => {
  await withTmp(async (out) => {
    const first = await createRunDir(out, 'exp', { job: { rounds: 3 } });
    await writeFile(join(first.dir, 'metrics.jsonl'), '{"ts":1,"round":0,"kind":"eval"}\n');
    await saveCheckpoint(first.dir, state(1));
    await assert.rejects(createRunDir(out, 'exp', {}), /holds checkpoints up to .*round-000001/);
    const again = await createRunDir(out, 'exp', { job: { rounds: 5 } }, { overwrite: true });
    assert.equal(again.resumed, false);
    assert.deepEqual(await readdir(again.dir), [CONFIG_FILE], 'the old run is gone');
    assert.deepEqual(JSON.parse(await readFile(join(again.dir, CONFIG_FILE), 'utf8')), { job: { rounds: 5 } });
    await mkdir(join(out, 'notes'));
    await writeFile(join(out, 'notes', 'todo.txt'), 'keep me');
    await assert.rejects(createRunDir(out, 'notes', {}, { overwrite: true }), /not a run folder/);
    assert.equal(await readFile(join(out, 'notes', 'todo.txt'), 'utf8'), 'keep me');
    await assert.rejects(createRunDir(out, 'exp', {}, { overwrite: true, resume: true }), /exclude each other/);
  });
});

test('discardUnstartedRun: a failed run without a checkpoint frees its job id; one with a checkpoint, or resumed, stays', async () => {
  await withTmp(async (out) => {
    const fresh = await createRunDir(out, 'early-failure', { job: { rounds: 3 } });
    await writeFile(join(fresh.dir, 'metrics.jsonl'), '{"ts":1,"round":0,"kind":"eval"}\n');
    assert.equal(await discardUnstartedRun(fresh), true);
    assert.deepEqual(await readdir(out), [], 'the folder is gone');
    assert.equal((await createRunDir(out, 'early-failure', {})).resumed, false, 'the id is free again');

    const started = await createRunDir(out, 'late-failure', {});
    await saveCheckpoint(started.dir, state(0));
    assert.equal(await discardUnstartedRun(started), false);
    const resumed = await createRunDir(out, 'early-failure', {}, { resume: true });
    assert.equal(await discardUnstartedRun(resumed), false, 'a resumed run is never deleted');
    assert.deepEqual((await readdir(out)).toSorted(), ['early-failure', 'late-failure']);
  });
});

test('checkpoint save/load round-trips round, JSON state and tensors bit for bit', async () => {
  await withTmp(async (dir) => {
    assert.equal(await loadLatestCheckpoint(dir), undefined);
    const s = state(4);
    const path = await saveCheckpoint(dir, s);
    assert.equal(path, join(dir, 'checkpoints', 'round-000004'));
    const back = await loadLatestCheckpoint(dir);
    assert.ok(back);
    assert.equal(back.round, 4);
    assert.deepEqual(back.json, s.json);
    assert.deepEqual([...back.tensors.keys()].toSorted(), [...s.tensors.keys()].toSorted());
    for (const [k, v] of s.tensors) assert.deepEqual(back.tensors.get(k), v, k);
  });
});

test('resume picks the newest complete checkpoint, keeps the last 2, and ignores a torn temp folder', async () => {
  await withTmp(async (dir) => {
    for (const r of [1, 2, 3]) await saveCheckpoint(dir, state(r));
    assert.deepEqual(
      (await listCheckpoints(dir)).map((c) => c.round),
      [2, 3],
    );
    // A save of round 4 that died before its rename: a temp folder with a partial state and tensors file.
    const torn = join(dir, 'checkpoints', '.tmp-round-000004-999-deadbeef');
    await mkdir(torn);
    await writeFile(join(torn, 'state.json'), '{"format":"fedbiot-checkpoint","version":1,"round":4');
    await writeFile(join(torn, 'tensors.safetensors'), Buffer.alloc(5));
    const latest = await loadLatestCheckpoint(dir);
    assert.equal(latest?.round, 3);
    assert.deepEqual(latest?.json, state(3).json);
    // The next successful save clears the leftover and still keeps two complete checkpoints.
    await saveCheckpoint(dir, state(4));
    assert.deepEqual((await readdir(join(dir, 'checkpoints'))).toSorted(), ['round-000003', 'round-000004']);
    assert.equal((await loadLatestCheckpoint(dir))?.round, 4);
    // Re-saving an existing round replaces it.
    await saveCheckpoint(dir, { ...state(4), json: { replaced: true } });
    assert.deepEqual((await loadLatestCheckpoint(dir))?.json, { replaced: true });
    // keep: 1 prunes down to the newest.
    await saveCheckpoint(dir, state(5), { keep: 1 });
    assert.deepEqual(
      (await listCheckpoints(dir)).map((c) => c.round),
      [5],
    );
  });
});

test('a damaged newest checkpoint is an error naming it, not a silent fallback', async () => {
  await withTmp(async (dir) => {
    await saveCheckpoint(dir, state(1));
    const second = await saveCheckpoint(dir, state(2));
    const tensors = join(second, 'tensors.safetensors');
    const bytes = await readFile(tensors);
    bytes[bytes.length - 1]! ^= 0xff;
    await writeFile(tensors, bytes);
    await assert.rejects(
      loadLatestCheckpoint(dir),
      (e: unknown) =>
        e instanceof RunDirError && e.message.includes('round-000002') && /sha256 .* does not match/.test(e.message),
    );
    await writeFile(join(second, 'state.json'), '{');
    await assert.rejects(loadLatestCheckpoint(dir), /state\.json: damaged checkpoint .*delete .*round-000002/);
    // After removing it as the message says, resume continues from round 1.
    await rm(second, { recursive: true });
    assert.equal((await loadLatestCheckpoint(dir))?.round, 1);
  });
});

test('MetricsLog appends one JSON object per line and survives a torn last line', async () => {
  await withTmp(async (dir) => {
    const log = await MetricsLog.open(dir);
    log.log({ round: 0, kind: 'train', client: 'a', loss: 2.5, ts: 1000 });
    log.log({ round: 0, kind: 'eval', method: 'base', client: 'all', test_loss: 3.1, accuracy: 0.25 });
    log.endRound(0, { seconds: 1.5 });
    log.log({ round: 1, kind: 'train', client: 'a', loss: Number.NaN });
    log.close();
    assert.throws(() => log.log({ round: 2, kind: 'x' }), /closed/);
    const lines = (await readFile(join(dir, 'metrics.jsonl'), 'utf8')).trimEnd().split('\n');
    assert.equal(lines.length, 4);
    assert.deepEqual(JSON.parse(lines[0]!), { ts: 1000, round: 0, kind: 'train', client: 'a', loss: 2.5 });
    assert.deepEqual(Object.keys(JSON.parse(lines[2]!)), ['ts', 'round', 'kind', 'seconds']);
    assert.equal(JSON.parse(lines[3]!).loss, null);
    // A crash mid-write leaves half a line: it is skipped; corruption in the middle is an error with file:line.
    await appendFile(join(dir, 'metrics.jsonl'), '{"ts":5,"round":1,"ki');
    const events = await readMetrics(join(dir, 'metrics.jsonl'));
    assert.equal(events.length, 4);
    assert.equal(events[1]!.kind, 'eval');
    const bad = join(dir, 'bad.jsonl');
    await writeFile(bad, '{"round":0,"kind":"a"}\nnot json\n{"round":1,"kind":"b"}\n');
    await assert.rejects(readMetrics(bad), new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: not JSON`));
    await writeFile(bad, '{"round":"0","kind":"a"}\n');
    await assert.rejects(readMetrics(bad), /bad\.jsonl:1: not a metrics event/);
  });
});

test('MetricsLog on resume drops events of rounds after the checkpoint', async () => {
  await withTmp(async (dir) => {
    const log = await MetricsLog.open(dir);
    for (const round of [0, 1, 2]) log.log({ round, kind: 'train', loss: round });
    log.close();
    const copy = join(dir, 'copy');
    await mkdir(copy);
    await cp(join(dir, 'metrics.jsonl'), join(copy, 'metrics.jsonl'));
    const resumed = await MetricsLog.open(dir, { discardAfterRound: 1 });
    resumed.log({ round: 2, kind: 'train', loss: 20 });
    resumed.close();
    assert.deepEqual(
      (await readMetrics(join(dir, 'metrics.jsonl'))).map((e) => [e.round, e['loss']]),
      [
        [0, 0],
        [1, 1],
        [2, 20],
      ],
    );
    // Nothing to drop: the file is left as it was.
    (await MetricsLog.open(copy, { discardAfterRound: 5 })).close();
    assert.equal((await readMetrics(join(copy, 'metrics.jsonl'))).length, 3);
  });
});

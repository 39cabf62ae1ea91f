import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  readSafetensorsHeader,
  readTensor,
  toFloat32,
  writeFileAtomic,
  writeSafetensors,
} from '../../engine/src/light.js';
import { RunDirError } from './errors.js';

/**
 * A run's folder on disk: `<outDir>/<id>/` with config.resolved.json, metrics.jsonl (one JSON object per event),
 * and checkpoints/round-NNNNNN/ folders written atomically so a job killed at any moment resumes from its last
 * completed round. The checkpoints of the run's method are checkpoints/round-NNNNNN; a baseline run in the same job
 * keeps its own apart, in checkpoints/<method>/round-NNNNNN (the `under` option). One writer per run folder.
 */

export const CONFIG_FILE = 'config.resolved.json';
export const METRICS_FILE = 'metrics.jsonl';
export const CHECKPOINTS_DIR = 'checkpoints';

export interface RunDir {
  readonly id: string;
  /** Absolute or outDir-relative path of the run folder. */
  readonly dir: string;
  /** True when an existing run folder was opened to resume. */
  readonly resumed: boolean;
}

export interface CreateRunDirOptions {
  /**
   * Open an existing `<outDir>/<jobId>` instead of failing. Its config.resolved.json must equal `config` (a resumed
   * run with other settings would mix two experiments); the first differing field is named otherwise.
   */
  readonly resume?: boolean;
  /**
   * Delete an existing `<outDir>/<jobId>` and start afresh (a run that failed, or one not worth resuming). Only a
   * run folder (one holding config.resolved.json) or an empty folder is deleted, never another folder that happens to
   * have the job id's name.
   */
  readonly overwrite?: boolean;
}

/**
 * Creates `<outDir>/<id>/` and writes `config` to config.resolved.json (atomically). The id is `jobId`, or a UTC
 * timestamp plus 6 random hex digits (20240131-235959-a1b2c3); a generated id that already exists is redrawn, a
 * given one is an error unless `resume` is set.
 */
export async function createRunDir(
  outDir: string,
  jobId?: string,
  config?: unknown,
  opts: CreateRunDirOptions = {},
): Promise<RunDir> {
  if (opts.resume === true && opts.overwrite === true)
    throw new RunDirError('resume and overwrite exclude each other: resume continues the run, overwrite deletes it');
  await mkdir(outDir, { recursive: true });
  if (jobId !== undefined) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(jobId))
      throw new RunDirError(`job id "${jobId}" is not a safe folder name`);
    const dir = join(outDir, jobId);
    if (opts.overwrite === true) await removeRunDir(dir);
    try {
      await mkdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (opts.resume !== true) {
        const rounds = await listCheckpoints(dir);
        const state =
          rounds.length === 0
            ? 'it holds no checkpoint: that run stopped before completing any work'
            : `it holds checkpoints up to ${rounds.at(-1)!.dir}`;
        throw new RunDirError(
          `${dir} already exists (job id "${jobId}"; ${state}): --resume continues it, --overwrite deletes it and ` +
            `starts again, or choose another job.id`,
        );
      }
      if (config !== undefined) await checkSameConfig(dir, config);
      return { id: jobId, dir, resumed: true };
    }
    if (config !== undefined) await writeConfig(dir, config);
    return { id: jobId, dir, resumed: false };
  }
  for (let attempt = 0; attempt < 20; attempt++) {
    const id = `${new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)}-${randomBytes(3).toString('hex')}`;
    const dir = join(outDir, id);
    try {
      await mkdir(dir); // not recursive: fails if another process took the same id
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw e;
    }
    if (config !== undefined) await writeConfig(dir, config);
    return { id, dir, resumed: false };
  }
  throw new RunDirError(`could not find a free run id under ${outDir} after 20 attempts`);
}

/**
 * After a failure: deletes the run folder if this process created it (not resumed) and it holds no checkpoint yet,
 * so a run that failed before completing any work does not block its job id. Returns whether it was deleted.
 */
export async function discardUnstartedRun(run: RunDir): Promise<boolean> {
  if (run.resumed || (await listCheckpoints(run.dir)).length > 0) return false;
  await removeRunDir(run.dir);
  return true;
}

/** Deletes a run folder (or an empty folder); refuses any other folder. Absent: nothing to do. */
async function removeRunDir(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (names.length > 0 && !names.includes(CONFIG_FILE))
    throw new RunDirError(`${dir}: not a run folder (no ${CONFIG_FILE}); --overwrite deletes only run folders`);
  await rm(dir, { recursive: true, force: true });
}

async function writeConfig(dir: string, config: unknown): Promise<void> {
  await writeFileAtomic(join(dir, CONFIG_FILE), async (fh) => {
    await fh.writeFile(JSON.stringify(config, null, 2) + '\n', 'utf8');
  });
}

async function checkSameConfig(dir: string, config: unknown): Promise<void> {
  const path = join(dir, CONFIG_FILE);
  let stored: unknown;
  try {
    stored = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return writeConfig(dir, config);
    throw new RunDirError(`${path}: cannot read the stored config: ${(e as Error).message}`);
  }
  const diffs: Difference[] = [];
  differences(stored, JSON.parse(JSON.stringify(config)) as unknown, '', diffs);
  if (diffs.length > 0) {
    const shown = diffs.slice(0, 10).map((d) => `  ${d.path || '(root)'}: was ${show(d.a)}, now ${show(d.b)}`);
    if (diffs.length > shown.length) shown.push(`  ... and ${diffs.length - shown.length} more`);
    throw new RunDirError(
      `${path}: cannot resume with a different configuration (a resumed run must be one experiment); ` +
        `${diffs.length} field${diffs.length === 1 ? '' : 's'} changed:\n${shown.join('\n')}\n` +
        `Undo the change to resume, or start again with --overwrite (deletes the run) or another job.id.`,
    );
  }
}

interface Difference {
  readonly path: string;
  readonly a: unknown;
  readonly b: unknown;
}

const show = (v: unknown): string => (v === undefined ? '(absent)' : JSON.stringify(v));

/** Every leaf where `a` and `b` differ, in key order. */
function differences(a: unknown, b: unknown, path: string, out: Difference[]): void {
  if (
    typeof a !== 'object' ||
    typeof b !== 'object' ||
    a === null ||
    b === null ||
    Array.isArray(a) !== Array.isArray(b)
  ) {
    if (!Object.is(a, b)) out.push({ path, a, b });
    return;
  }
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  for (const k of new Set([...Object.keys(ao), ...Object.keys(bo)]))
    differences(ao[k], bo[k], path === '' ? k : `${path}.${k}`, out);
}

// ---------------------------------------------------------------------------------------------------------------
// metrics.jsonl

/** One line of metrics.jsonl. `ts` is milliseconds since the epoch; values are any further JSON fields. */
export interface MetricsEvent {
  readonly ts: number;
  readonly round: number;
  readonly kind: string;
  readonly client?: string;
  readonly method?: string;
  readonly [value: string]: unknown;
}

/** An event to log; `ts` defaults to now. */
export interface MetricsInput {
  readonly ts?: number;
  readonly round: number;
  readonly kind: string;
  readonly client?: string;
  readonly method?: string;
  readonly [value: string]: unknown;
}

export interface MetricsLogOptions {
  /**
   * On resume: drop events of rounds after this one (work of a round that did not complete) before appending, so
   * the log matches the checkpoint it resumes from. The file is rewritten atomically.
   */
  readonly discardAfterRound?: number;
}

/**
 * Appends events to `<runDir>/metrics.jsonl`, one JSON object per line, written synchronously so a crash loses at
 * most the line being written. `endRound` fsyncs, so every completed round's events survive power loss.
 */
export class MetricsLog {
  private fd: number | undefined;

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  static async open(runDir: string, opts: MetricsLogOptions = {}): Promise<MetricsLog> {
    const path = join(runDir, METRICS_FILE);
    if (opts.discardAfterRound !== undefined) {
      const keep = opts.discardAfterRound;
      const events = await readMetrics(path).catch((e: unknown) => {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw e;
      });
      const kept = events.filter((e) => e.round <= keep);
      if (kept.length !== events.length) {
        await writeFileAtomic(path, async (fh) => {
          await fh.writeFile(kept.map((e) => JSON.stringify(e) + '\n').join(''), 'utf8');
        });
      }
    }
    return new MetricsLog(path, openSync(path, 'a'));
  }

  /** Appends one event; `ts` defaults to now. Non-finite numbers are written as null (JSON has no NaN). */
  log(event: MetricsInput): MetricsEvent {
    if (this.fd === undefined) throw new RunDirError(`${this.path}: metrics log is closed`);
    if (!Number.isInteger(event.round))
      throw new RunDirError(`${this.path}: event round must be an integer, got ${event.round}`);
    if (typeof event.kind !== 'string' || event.kind === '')
      throw new RunDirError(`${this.path}: event kind must be a non-empty string`);
    const full: MetricsEvent = { ...event, ts: event.ts ?? Date.now() };
    const { ts, round, kind, ...rest } = full;
    writeSync(this.fd, JSON.stringify({ ts, round, kind, ...rest }) + '\n');
    return full;
  }

  /** Logs a `round_end` event and fsyncs the file: the round's metrics are durable once this returns. */
  endRound(round: number, values: Record<string, unknown> = {}): void {
    this.log({ ...values, round, kind: 'round_end' });
    this.sync();
  }

  sync(): void {
    if (this.fd !== undefined) fsyncSync(this.fd);
  }

  close(): void {
    if (this.fd === undefined) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Reads metrics.jsonl. A torn last line (the process died mid-write) is skipped; any other malformed line is an
 * error naming `file:line`.
 */
export async function readMetrics(path: string): Promise<MetricsEvent[]> {
  const text = await readFile(path, 'utf8');
  const lines = text.split('\n');
  const endsClean = text.endsWith('\n');
  const events: MetricsEvent[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      if (i === lines.length - 1 && !endsClean) break; // torn final line: the writer died mid-line
      throw new RunDirError(`${path}:${i + 1}: not JSON: ${(e as Error).message}`);
    }
    if (
      typeof v !== 'object' ||
      v === null ||
      typeof (v as MetricsEvent).round !== 'number' ||
      typeof (v as MetricsEvent).kind !== 'string'
    ) {
      throw new RunDirError(`${path}:${i + 1}: not a metrics event (needs numeric round and string kind)`);
    }
    events.push(v as MetricsEvent);
  }
  return events;
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints

/** What a checkpoint holds: the last completed round, JSON state (round counter, sampler, optimiser scalars...) and
 * named float32 tensors (LoRA weights, optimiser moments). */
export interface CheckpointState {
  readonly round: number;
  readonly json: unknown;
  readonly tensors: ReadonlyMap<string, Float32Array>;
}

export interface LoadedCheckpoint extends CheckpointState {
  readonly tensors: Map<string, Float32Array>;
  /** The checkpoint folder. */
  readonly dir: string;
}

export interface SaveCheckpointOptions {
  /** Complete checkpoints to keep, newest first. Default 2. */
  readonly keep?: number;
  /** Subfolder of checkpoints/ (a baseline's method name); default '': the run's own checkpoints. */
  readonly under?: string;
}

/** checkpoints/ of a run, or its subfolder `under`. */
function checkpointsRoot(runDir: string, under: string): string {
  if (under !== '' && !/^[a-z0-9][a-z0-9-]*$/.test(under))
    throw new RunDirError(`checkpoint folder "${under}" is not a plain lower-case name`);
  return join(runDir, CHECKPOINTS_DIR, under);
}

const STATE_FILE = 'state.json';
const TENSORS_FILE = 'tensors.safetensors';
const FORMAT = 'fedbiot-checkpoint';
const ROUND_DIR = /^round-(\d{6,})$/;

const roundDirName = (round: number): string => `round-${String(round).padStart(6, '0')}`;

/**
 * Saves a checkpoint atomically: everything is written and fsynced into `checkpoints/.tmp-*`, which is then renamed
 * to `checkpoints/round-NNNNNN`. A crash at any point leaves either no new folder or a complete one; readers only
 * consider `round-*` folders. Older complete checkpoints beyond `keep` and leftover temp folders are removed after.
 * Saving a round that already has a checkpoint replaces it.
 * @returns the checkpoint folder.
 */
export async function saveCheckpoint(
  runDir: string,
  state: CheckpointState,
  opts: SaveCheckpointOptions = {},
): Promise<string> {
  const keep = opts.keep ?? 2;
  if (!Number.isInteger(keep) || keep < 1)
    throw new RunDirError(`saveCheckpoint: keep must be an integer >= 1, got ${keep}`);
  if (!Number.isSafeInteger(state.round) || state.round < 0)
    throw new RunDirError(`saveCheckpoint: round must be an integer >= 0, got ${state.round}`);
  const root = checkpointsRoot(runDir, opts.under ?? '');
  await mkdir(root, { recursive: true });
  const tmp = join(root, `.tmp-${roundDirName(state.round)}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  try {
    const tensorsPath = join(tmp, TENSORS_FILE);
    const entries = new Map(
      [...state.tensors].map(([name, data]) => [name, { dtype: 'F32', shape: [data.length], data }] as const),
    );
    await writeSafetensors(tensorsPath, entries);
    const sha256 = createHash('sha256')
      .update(await readFile(tensorsPath))
      .digest('hex');
    const doc = {
      format: FORMAT,
      version: 1,
      round: state.round,
      savedAt: new Date().toISOString(),
      tensors: { file: TENSORS_FILE, sha256, count: entries.size },
      json: state.json,
    };
    await writeFileAtomic(join(tmp, STATE_FILE), async (fh) => {
      await fh.writeFile(JSON.stringify(doc) + '\n', 'utf8');
    });
    await fsyncDir(tmp);
    const final = join(root, roundDirName(state.round));
    if (await exists(final)) {
      // rename() cannot replace a non-empty folder: move the old one aside first (it is never a round-* name).
      const aside = join(root, `.old-${roundDirName(state.round)}-${randomBytes(4).toString('hex')}`);
      await rename(final, aside);
      await rename(tmp, final);
      await rm(aside, { recursive: true, force: true });
    } else {
      await rename(tmp, final);
    }
    await fsyncDir(root);
    await prune(root, keep, tmp);
    return final;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Loads the newest complete checkpoint of a run (or of its subfolder `under` of checkpoints/), or undefined when
 * there is none. Temp folders from interrupted
 * saves are ignored. The newest checkpoint is verified (format, tensor file digest); if it is damaged the error
 * names it rather than silently resuming from an older round.
 */
export async function loadLatestCheckpoint(runDir: string, under = ''): Promise<LoadedCheckpoint | undefined> {
  const newest = (await listCheckpoints(runDir, under)).at(-1);
  return newest === undefined ? undefined : loadCheckpoint(newest.dir);
}

/** Complete checkpoints of a run (or those in its subfolder `under` of checkpoints/), oldest first. */
export async function listCheckpoints(runDir: string, under = ''): Promise<{ round: number; dir: string }[]> {
  const root = checkpointsRoot(runDir, under);
  let names: string[];
  try {
    names = await readdir(root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return names
    .map((n) => ({ m: ROUND_DIR.exec(n), n }))
    .filter((x): x is { m: RegExpExecArray; n: string } => x.m !== null)
    .map((x) => ({ round: Number(x.m[1]), dir: join(root, x.n) }))
    .toSorted((a, b) => a.round - b.round);
}

/** Loads and verifies one checkpoint folder. */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const statePath = join(dir, STATE_FILE);
  let doc: {
    format?: unknown;
    version?: unknown;
    round?: unknown;
    tensors?: { file?: unknown; sha256?: unknown };
    json?: unknown;
  };
  try {
    doc = JSON.parse(await readFile(statePath, 'utf8'));
  } catch (e) {
    throw new RunDirError(
      `${statePath}: damaged checkpoint (${(e as Error).message}); delete ${dir} to resume from the previous one`,
    );
  }
  if (
    doc.format !== FORMAT ||
    doc.version !== 1 ||
    typeof doc.round !== 'number' ||
    typeof doc.tensors?.sha256 !== 'string'
  ) {
    throw new RunDirError(`${statePath}: not a ${FORMAT} v1 state file`);
  }
  const tensorsPath = join(dir, TENSORS_FILE);
  const bytes = await readFile(tensorsPath).catch((e: unknown) => {
    throw new RunDirError(
      `${tensorsPath}: cannot read (${(e as Error).message}); delete ${dir} to resume from the previous one`,
    );
  });
  const sha = createHash('sha256').update(bytes).digest('hex');
  if (sha !== doc.tensors.sha256) {
    throw new RunDirError(
      `${tensorsPath}: sha256 ${sha} does not match the recorded ${doc.tensors.sha256}; delete ${dir} to resume from the previous one`,
    );
  }
  const header = await readSafetensorsHeader(tensorsPath);
  const tensors = new Map<string, Float32Array>();
  for (const name of header.tensors.keys()) {
    const t = await readTensor(tensorsPath, name, header);
    tensors.set(name, toFloat32(t.dtype, t.data));
  }
  return { round: doc.round, json: doc.json, tensors, dir };
}

async function prune(root: string, keep: number, ownTmp: string): Promise<void> {
  const names = await readdir(root);
  const complete = names
    .filter((n) => ROUND_DIR.test(n))
    .toSorted((a, b) => Number(ROUND_DIR.exec(a)![1]) - Number(ROUND_DIR.exec(b)![1]));
  const doomed = complete.slice(0, Math.max(0, complete.length - keep));
  // Temp and set-aside folders are leftovers of interrupted saves (single writer per run dir).
  const leftovers = names.filter((n) => (n.startsWith('.tmp-') || n.startsWith('.old-')) && join(root, n) !== ownTmp);
  for (const n of [...doomed, ...leftovers]) await rm(join(root, n), { recursive: true, force: true });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Makes a folder's entries (new files, renames) durable. */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

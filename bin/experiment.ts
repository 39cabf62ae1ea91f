/**
 * `npm run experiment -- --spec experiments/demo-grid.json [--parallel N] [--out runs/exp] [--only PATTERN]`:
 * runs every cell of an experiment grid (methods x grid axes x seeds) as its own `node dist/bin/main.js` process,
 * N at a time, each with model.threads = threadsPerRun (default 1). Resumable: a cell whose run folder has
 * results.json is done; a started one continues with --resume. Writes <out>/summary.md, summary.json, report.html
 * (mean ± 95 % t-interval per method, per-round curves, verdict) and timings.jsonl; cell logs in <out>/logs/.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { appendFile, copyFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  expandGrid,
  loadExperimentSpec,
  type Cell,
  readCellResult,
  summaryMarkdown,
  writeSummary,
  type CellResult,
  progress,
} from '../libs/fedbiot/src/light.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
if (args.includes('--help') || args.includes('-h') || !opt('spec')) {
  console.log('usage: npm run experiment -- --spec FILE.json [--parallel N] [--out DIR] [--only SUBSTRING]');
  process.exit(opt('spec') ? 0 : 2);
}
const specPath = resolve(opt('spec')!);
const outDir = resolve(opt('out') ?? join('runs', 'experiment'));
const parallel = Number(opt('parallel') ?? 1);
if (!Number.isInteger(parallel) || parallel < 1) {
  console.error(`--parallel must be a positive integer, got ${opt('parallel')}`);
  process.exit(2);
}
const only = opt('only');

try {
  const spec = await loadExperimentSpec(specPath);
  const all = expandGrid(spec);
  const cells = only ? all.filter((c) => c.id.includes(only)) : all;
  const runsDir = join(outDir, 'runs');
  const logsDir = join(outDir, 'logs');
  await mkdir(runsDir, { recursive: true });
  await mkdir(logsDir, { recursive: true });
  await copyFile(specPath, join(outDir, 'spec.json'));
  const mainJs = join(dirname(fileURLToPath(import.meta.url)), 'main.js');
  const config = spec.config ? resolve(dirname(specPath), spec.config) : undefined;

  const done: CellResult[] = [];
  const todo: Cell[] = [];
  for (const c of cells) {
    const r = await readCellResult(join(runsDir, c.id), c);
    if (r) done.push(r);
    else todo.push(c);
  }
  console.log(
    `experiment ${specPath}: ${cells.length} cells (${done.length} already done), ${parallel} in parallel, ${spec.threadsPerRun} thread(s) each -> ${outDir}`,
  );

  const runCell = (c: Cell): Promise<number> =>
    new Promise((resolveRun, reject) => {
      const resume = existsSync(join(runsDir, c.id, 'config.resolved.json'));
      const argv = [
        mainJs,
        ...(config ? ['--config', config] : []),
        ...[...c.overrides, `job.id=${c.id}`, `job.outDir=${runsDir}`, `model.threads=${spec.threadsPerRun}`].flatMap(
          (o) => ['--set', o],
        ),
        ...(resume ? ['--resume'] : []),
      ];
      const fd = openSync(join(logsDir, `${c.id}.log`), 'a');
      const child = spawn(process.execPath, argv, { stdio: ['ignore', fd, fd], env: { ...process.env, CI: '1' } });
      child.on('error', (e) => {
        closeSync(fd);
        reject(e);
      });
      child.on('exit', (code) => {
        closeSync(fd);
        resolveRun(code ?? 1);
      });
    });

  const bar = progress('experiment cells', Math.max(todo.length, 1));
  const t0 = Date.now();
  let finished = 0;
  const failed: string[] = [];
  const queue = [...todo];
  const worker = async (): Promise<void> => {
    for (let c = queue.shift(); c; c = queue.shift()) {
      const start = Date.now();
      const code = await runCell(c);
      const seconds = (Date.now() - start) / 1000;
      await appendFile(
        join(outDir, 'timings.jsonl'),
        JSON.stringify({ cell: c.id, seconds, exit: code, parallel, threads: spec.threadsPerRun }) + '\n',
      );
      finished++;
      const r = code === 0 ? await readCellResult(join(runsDir, c.id), c) : undefined;
      if (r) done.push(r);
      else failed.push(`${c.id} (exit ${code}; log ${join(logsDir, `${c.id}.log`)})`);
      // ETA from the mean wall time per finished cell so far, for the cells still queued or running.
      const perCell = (Date.now() - t0) / 1000 / finished;
      const eta = perCell * (todo.length - finished);
      bar.tick(1, `${c.id} ${seconds.toFixed(0)} s${code === 0 ? '' : ' FAILED'}; ETA ${formatDuration(eta)}`);
    }
  };
  if (todo.length > 0) await Promise.all(Array.from({ length: Math.min(parallel, todo.length) }, worker));
  bar.done();
  const summary = await writeSummary(outDir, spec, cells, done);
  console.log('\n' + summaryMarkdown(spec, summary));
  if (failed.length > 0) {
    console.error(`\n${failed.length} cell(s) failed; rerun the same command to retry them:\n  ${failed.join('\n  ')}`);
  }
  console.log(outDir);
  process.exit(failed.length > 0 ? 1 : 0);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
}

function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const m = Math.round(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : s >= 60 ? `${m} min` : `${Math.round(s)} s`;
}

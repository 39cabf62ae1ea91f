/**
 * Starts the four services of a distributed job locally, one child process each, against NATS_URL:
 *   npm run build && JOB_SPEC=job.yaml node dist/bin/services.js [--trainers N] [--port-base P] [--exit-when-done]
 *     [--keep-dashboard]
 * HTTP ports: P aggregator, P+1 server-alignment, P+2 evaluator (dashboard at /dashboard), P+3.. trainers
 * (default P = 8080, N = 2). Logs are the children's JSON lines on stdout. SIGINT/SIGTERM stop every child. A child
 * that dies is restarted (after 1 s, doubling up to 30 s while it keeps dying within a minute of its start; after 10
 * restarts in a row the launcher gives up and stops everything): a trainer's unacked task is redelivered, a restarted
 * aggregator or server-alignment resumes from KV. With --exit-when-done the aggregator exits when the job
 * completed, and the launcher then stops the rest and exits with the aggregator's status; with --keep-dashboard too
 * (or KEEP_DASHBOARD=1) it stops the rest but the evaluator, whose dashboard shows the finished job until SIGINT /
 * SIGTERM, and then exits with the aggregator's status. The launcher's own lines are logs like the services' (JSON,
 * or LOG_FORMAT=pretty).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DEFAULT_NATS_URL } from '../services/common/env.js';
import { JsonLogger } from '../services/common/logger.js';

const args = process.argv.slice(2);
let trainers = 2;
let portBase = 8080;
let exitWhenDone = false;
let keepDashboard = ['1', 'true', 'yes'].includes((process.env['KEEP_DASHBOARD'] ?? '').toLowerCase());
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--trainers') trainers = Number(args[++i]);
  else if (a === '--port-base') portBase = Number(args[++i]);
  else if (a === '--exit-when-done') exitWhenDone = true;
  else if (a === '--keep-dashboard') keepDashboard = true;
  else if (a === '--help' || a === '-h') {
    console.log(
      'usage: JOB_SPEC=job.yaml [NATS_URL=...] node dist/bin/services.js [--trainers N] [--port-base P] [--exit-when-done] [--keep-dashboard]\n' +
        "  --exit-when-done  stop everything and exit with the aggregator's status once the job completed\n" +
        "  --keep-dashboard  (or KEEP_DASHBOARD=1) with --exit-when-done: keep the evaluator's dashboard up until Ctrl-C",
    );
    process.exit(0);
  } else {
    console.error(`unknown argument ${a} (see --help)`);
    process.exit(2);
  }
}
if (!Number.isInteger(trainers) || trainers < 1) throw new Error(`--trainers: ${trainers} is not a positive integer`);
if (!Number.isInteger(portBase) || portBase < 1 || portBase + 3 + trainers > 65535)
  throw new Error(`--port-base: ${portBase} leaves no room for ${3 + trainers} ports`);
if (!process.env['JOB_SPEC']) {
  console.error('JOB_SPEC: set it to the path of the job spec (YAML or JSON)');
  process.exit(2);
}

const main = (name: string): string => fileURLToPath(new URL(`../services/${name}/main.js`, import.meta.url));
const plan: { name: string; script: string; env: Record<string, string> }[] = [
  { name: 'server-alignment', script: main('server-alignment'), env: { HTTP_PORT: String(portBase + 1) } },
  { name: 'evaluator', script: main('evaluator'), env: { HTTP_PORT: String(portBase + 2) } },
  ...Array.from({ length: trainers }, (_, i) => ({
    name: `client-trainer-${i + 1}`,
    script: main('client-trainer'),
    env: { HTTP_PORT: String(portBase + 3 + i), REPLICA: `client-trainer-${i + 1}` },
  })),
  {
    name: 'aggregator',
    script: main('aggregator'),
    env: { HTTP_PORT: String(portBase), ...(exitWhenDone ? { EXIT_WHEN_DONE: '1' } : {}) },
  },
];

const children = new Map<string, ChildProcess>();
let stopping = false;
const log = new JsonLogger('launcher');
const say = (msg: string, fields: Record<string, unknown> = {}): void => log.info(msg, fields);

/** Stops every child (but those named in `keep`) and no longer restarts any. */
function stopAll(code: number, keep: ReadonlySet<string> = new Set()): void {
  if (stopping) return;
  stopping = true;
  process.exitCode = code;
  for (const t of pendingRestarts) clearTimeout(t);
  for (const [name, c] of children)
    if (!keep.has(name) && c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
}

/** The job is done: stop the rest; with --keep-dashboard the evaluator stays up until SIGINT / SIGTERM. */
function jobDone(code: number): void {
  if (!keepDashboard) return stopAll(code);
  stopAll(code, new Set(['evaluator']));
  const url = `http://127.0.0.1:${portBase + 2}/dashboard`;
  say('job done; the dashboard stays up until SIGINT / SIGTERM', { url, code });
  const stopDashboard = (): void => void children.get('evaluator')?.kill('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  process.once('SIGINT', stopDashboard);
  process.once('SIGTERM', stopDashboard);
}
const pendingRestarts = new Set<NodeJS.Timeout>();

/** Restarts in a row before the launcher gives up on a child. */
const MAX_RESTARTS = 10;
/** A child that ran this long before dying starts its backoff afresh. */
const STABLE_MS = 60_000;

function launch(p: (typeof plan)[number], restarts: number): void {
  const startedAt = Date.now();
  const child = spawn(process.execPath, [p.script], {
    env: { ...process.env, NATS_URL: process.env['NATS_URL'] ?? DEFAULT_NATS_URL, ...p.env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  children.set(p.name, child);
  say('started', { child: p.name, pid: child.pid, port: Number(p.env['HTTP_PORT']), restarts });
  child.on('exit', (code, signal) => {
    say('exited', { child: p.name, code, signal });
    if (stopping) return;
    if (p.name === 'aggregator' && exitWhenDone && code !== null) return jobDone(code);
    const inARow = Date.now() - startedAt >= STABLE_MS ? 0 : restarts;
    if (inARow >= MAX_RESTARTS) {
      say('giving up', { child: p.name, restarts: inARow });
      return stopAll(code === 0 ? 1 : (code ?? 1));
    }
    const inMs = Math.min(30_000, 1000 * 2 ** inARow);
    say('restarting', { child: p.name, inMs });
    const t = setTimeout(() => {
      pendingRestarts.delete(t);
      if (!stopping) launch(p, inARow + 1);
    }, inMs);
    pendingRestarts.add(t);
  });
}

for (const p of plan) launch(p, 0);
process.once('SIGINT', () => stopAll(0));
process.once('SIGTERM', () => stopAll(0));

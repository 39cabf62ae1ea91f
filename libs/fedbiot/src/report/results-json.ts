import { writeFileAtomic } from '../../../engine/src/light.js';
import { join } from 'node:path';
import type { MetricsEvent } from '../run-dir.js';
import { RESULT_METHODS, type ResultMethod } from '../methods.js';

/**
 * results.json: the final numbers of a run, one row per (method, client) plus the 'all' (global test set) row,
 * and the adapter bytes exchanged per round. Field names are snake_case because the file is read by scripts in
 * other languages.
 */

/** The client column value for the global test set. */
export const ALL_CLIENTS = 'all';

export interface ResultRow {
  readonly method: ResultMethod;
  /** A client id, or 'all' for the global test set. */
  readonly client: string;
  /** Mean token cross-entropy on held-out data (nats/token); null when not measured. */
  readonly test_loss: number | null;
  /** Exact-match accuracy in [0, 1]; null for tasks without a checkable answer. */
  readonly accuracy: number | null;
}

/** Mean bytes per round per client: server -> client (down) and client -> server (up). */
export interface BytesPerRound {
  readonly down: number;
  readonly up: number;
}

export interface Results {
  readonly rows: readonly ResultRow[];
  readonly bytes_per_round: BytesPerRound;
}

/** The metrics event an evaluation writes: one per (round, method, client). */
export interface EvalEvent extends MetricsEvent {
  readonly kind: 'eval';
  readonly method: ResultMethod;
  readonly client: string;
  readonly test_loss?: number | null;
  readonly accuracy?: number | null;
}

/** The metrics event counting one round's traffic per client (kind 'comm'), in bytes. */
export interface CommEvent extends MetricsEvent {
  readonly kind: 'comm';
  readonly down: number;
  readonly up: number;
}

export function isEvalEvent(e: MetricsEvent): e is EvalEvent {
  return e.kind === 'eval' && typeof e['method'] === 'string' && typeof e['client'] === 'string';
}

export function isCommEvent(e: MetricsEvent): e is CommEvent {
  return e.kind === 'comm' && typeof e['down'] === 'number' && typeof e['up'] === 'number';
}

/**
 * Results from a run's metrics events: for every (method, client) the evaluation of the latest round that has one,
 * and the mean of the 'comm' events' down/up bytes (0 when there are none). Rows are ordered by RESULT_METHODS, then
 * client id with 'all' last.
 */
export function resultsFromEvents(events: readonly MetricsEvent[]): Results {
  const latest = new Map<string, EvalEvent>();
  let down = 0;
  let up = 0;
  let comms = 0;
  for (const e of events) {
    if (isEvalEvent(e)) {
      const key = `${e.method}\u0000${e.client}`;
      const prev = latest.get(key);
      if (prev === undefined || e.round >= prev.round) latest.set(key, e);
    } else if (isCommEvent(e)) {
      down += e.down;
      up += e.up;
      comms++;
    }
  }
  const rows = [...latest.values()].map((e) => ({
    method: e.method,
    client: e.client,
    test_loss: e.test_loss ?? null,
    accuracy: e.accuracy ?? null,
  }));
  return {
    rows: sortRows(rows),
    bytes_per_round: { down: comms === 0 ? 0 : down / comms, up: comms === 0 ? 0 : up / comms },
  };
}

/** Rows in report order: methods as in RESULT_METHODS, clients by id with 'all' last. */
export function sortRows(rows: readonly ResultRow[]): ResultRow[] {
  return rows.toSorted(
    (a, b) => RESULT_METHODS.indexOf(a.method) - RESULT_METHODS.indexOf(b.method) || compareClients(a.client, b.client),
  );
}

/** Client ids in display order: by code unit, 'all' last. */
export function compareClients(a: string, b: string): number {
  if (a === b) return 0;
  if (a === ALL_CLIENTS) return 1;
  if (b === ALL_CLIENTS) return -1;
  return a < b ? -1 : 1;
}

/** Checks a Results value; returns the problems (empty when valid). */
export function validateResults(results: Results): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  results.rows.forEach((r, i) => {
    const at = `rows[${i}]`;
    if (!(RESULT_METHODS as readonly string[]).includes(r.method))
      problems.push(`${at}.method: unknown method "${r.method}" (one of ${RESULT_METHODS.join(', ')})`);
    if (typeof r.client !== 'string' || r.client === '')
      problems.push(`${at}.client: must be a client id or '${ALL_CLIENTS}'`);
    if (r.test_loss !== null && !(Number.isFinite(r.test_loss) && r.test_loss >= 0))
      problems.push(`${at}.test_loss: must be a finite number >= 0 or null, got ${r.test_loss}`);
    if (r.accuracy !== null && !(r.accuracy >= 0 && r.accuracy <= 1))
      problems.push(`${at}.accuracy: must be in [0, 1] or null, got ${r.accuracy}`);
    const key = `${r.method}/${r.client}`;
    if (seen.has(key)) problems.push(`${at}: duplicate row for method ${r.method}, client ${r.client}`);
    seen.add(key);
  });
  for (const k of ['down', 'up'] as const) {
    const v = results.bytes_per_round[k];
    if (!(Number.isFinite(v) && v >= 0)) problems.push(`bytes_per_round.${k}: must be a finite number >= 0, got ${v}`);
  }
  return problems;
}

/**
 * Writes `<runDir>/results.json` atomically and returns its path.
 * @throws Error listing every problem when `results` is not valid.
 */
export async function writeResultsJson(runDir: string, results: Results): Promise<string> {
  const problems = validateResults(results);
  if (problems.length > 0)
    throw new Error(`results.json: invalid results:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  const path = join(runDir, 'results.json');
  const body = { rows: sortRows(results.rows), bytes_per_round: results.bytes_per_round };
  await writeFileAtomic(path, async (fh) => {
    await fh.writeFile(JSON.stringify(body, null, 2) + '\n', 'utf8');
  });
  return path;
}

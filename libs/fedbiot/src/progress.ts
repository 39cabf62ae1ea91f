import cliProgress from 'cli-progress';
import { logLevelFromEnv, logs } from './log-level.js';

/**
 * Progress for long steps (pre-alignment, local training, evaluation): a live bar when the output is a terminal,
 * and plain lines otherwise (CI logs, `| tee`, Kubernetes pods), where redrawing a bar would flood the log.
 */

/** Extra figures shown after the count, e.g. `{ loss: 2.31 }` or a short text. */
export type ProgressInfo = Readonly<Record<string, string | number>> | string;

export interface Progress {
  /** Advances by `n` steps (default 1) and sets the info shown with the bar or line. */
  tick(n?: number, info?: ProgressInfo): void;
  /** Finishes: stops the bar, or prints the final line with the elapsed time. Idempotent. */
  done(info?: ProgressInfo): void;
}

export interface ProgressOptions {
  /** Where to draw. Default process.stderr, so stdout stays clean for tables and JSON. */
  readonly stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Force bar (true) or line (false) mode; default: bar iff the stream is a TTY and CI is not set. */
  readonly tty?: boolean;
  /** Plain mode: print when progress crosses each multiple of this percentage. Default 10. */
  readonly everyPercent?: number;
  /** Clock in ms, for tests. Default Date.now. */
  readonly now?: () => number;
}

/**
 * Starts a progress display for `total` steps (a positive integer).
 * Plain mode prints `<label>: <value>/<total> (<pct>%, ~<eta> left) <info>` each time progress crosses a multiple of
 * `everyPercent` (the estimate once time has passed: the mean step time so far times the steps left), and
 * `<label>: done <total>/<total> in <s>s <info>` at done().
 */
export function progress(label: string, total: number, opts: ProgressOptions = {}): Progress {
  if (!Number.isInteger(total) || total < 1)
    throw new RangeError(`progress(${label}): total must be an integer >= 1, got ${total}`);
  // LOG_LEVEL=warn or error: progress is chatter; a given stream (tests) is always written.
  if (opts.stream === undefined && !logs('info', levelOrInfo())) return { tick() {}, done() {} };
  const stream = opts.stream ?? process.stderr;
  const tty = opts.tty ?? (stream.isTTY === true && process.env['CI'] === undefined);
  return tty
    ? barProgress(label, total, stream)
    : lineProgress(label, total, stream, opts.everyPercent ?? 10, opts.now ?? Date.now);
}

function formatInfo(info: ProgressInfo | undefined): string {
  if (info === undefined) return '';
  if (typeof info === 'string') return info;
  return Object.entries(info)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? fmtNumber(v) : v}`)
    .join(' ');
}

function fmtNumber(v: number): string {
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  // Number(...) drops trailing zeros: 0.5 not 0.5000.
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

function suffix(info: ProgressInfo | undefined): string {
  const s = formatInfo(info);
  return s === '' ? '' : ` ${s}`;
}

function barProgress(label: string, total: number, stream: NodeJS.WritableStream): Progress {
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {value}/{total} | {duration_formatted} < {eta_formatted} | {info}`,
      stream,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { info: '' });
  let value = 0;
  let finished = false;
  return {
    tick(n = 1, info) {
      if (finished) return;
      value = Math.min(total, value + n);
      bar.update(value, { info: formatInfo(info) });
    },
    done(info) {
      if (finished) return;
      finished = true;
      if (info !== undefined) bar.update(value, { info: formatInfo(info) });
      bar.stop();
    },
  };
}

function lineProgress(
  label: string,
  total: number,
  stream: NodeJS.WritableStream,
  everyPercent: number,
  now: () => number,
): Progress {
  const start = now();
  const step = Math.max(1, (total * everyPercent) / 100);
  let value = 0;
  let nextMark = step;
  let finished = false;
  return {
    tick(n = 1, info) {
      if (finished) return;
      value = Math.min(total, value + n);
      if (value >= nextMark && value < total) {
        const elapsed = now() - start;
        const eta = elapsed > 0 ? `, ~${formatDuration((elapsed / value) * (total - value))} left` : '';
        stream.write(`${label}: ${value}/${total} (${Math.floor((100 * value) / total)}%${eta})${suffix(info)}\n`);
        while (nextMark <= value) nextMark += step;
      }
    },
    done(info) {
      if (finished) return;
      finished = true;
      const secs = ((now() - start) / 1000).toFixed(1);
      stream.write(`${label}: done ${value}/${total} in ${secs}s${suffix(info)}\n`);
    },
  };
}

/**
 * One line of progress that is not a bar (the job's overall line): on stderr like the bars, hidden under
 * LOG_LEVEL=warn or error; a given stream (tests) is always written.
 */
export function progressNote(line: string, stream?: NodeJS.WritableStream): void {
  if (stream === undefined && !logs('info', levelOrInfo())) return;
  (stream ?? process.stderr).write(`${line}\n`);
}

/** 42s, 3m05s, 1h02m: what a person reads at a glance. */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** LOG_LEVEL for progress: a bad value is the entry point's to report (bin/main.ts does); progress never throws. */
function levelOrInfo(): ReturnType<typeof logLevelFromEnv> {
  try {
    return logLevelFromEnv();
  } catch {
    return 'info';
  }
}

/**
 * The time left in a phase of `total` rounds, from the mean time of the rounds run so far in this process (a
 * resumed phase counts from where it resumed; the pre-alignment before the first round is not a round).
 */
export function roundsEta(
  total: number,
  now: () => number = Date.now,
): {
  /** Call as round `round` (0-based) starts. */
  begin(round: number): void;
  /** After `completed` rounds: `; ~3m05s left` (or '' when nothing is known or left). */
  after(completed: number): string;
} {
  let t0: number | undefined;
  let first = 0;
  return {
    begin(round) {
      if (t0 !== undefined) return;
      t0 = now();
      first = round;
    },
    after(completed) {
      const ran = completed - first;
      if (t0 === undefined || ran <= 0 || completed >= total) return '';
      return `; ~${formatDuration(((now() - t0) / ran) * (total - completed))} left`;
    },
  };
}

/** Shared benchmark plumbing: timing, memory, machine description, table printing, JSON results. */
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { connectTransport } from '../libs/protocol/src/index.js';

export interface Timing {
  readonly median: number;
  readonly min: number;
  readonly runs: number;
}

/** Runs `fn` `warmup` times, then `runs` times, and returns milliseconds (median and min). */
export async function time(fn: () => Promise<unknown>, runs: number, warmup = 2): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return { median: ms[Math.floor(ms.length / 2)]!, min: ms[0]!, runs };
}

/** Peak resident set size of this process (workers included) in MiB. */
export function peakRssMib(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

export function machine(): string {
  const c = cpus();
  return `${c.length} x ${c[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
}

export function printTable(rows: readonly Record<string, unknown>[], columns: readonly string[]): void {
  const cell = (v: unknown): string =>
    typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : String(v ?? '');
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => '| ' + vals.map((v, i) => v.padEnd(widths[i]!)).join(' | ') + ' |';
  console.log(line([...columns]));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows) console.log(line(columns.map((c) => cell(r[c]))));
}

/**
 * Writes rows to bench/results/<name>.json, replacing earlier rows of the same (case, provider) so CPU runs
 * here and GPU runs on the device machine accumulate in one file.
 */
export function writeResults(
  name: string,
  rows: readonly Record<string, unknown>[],
  dir = join(process.cwd(), 'bench', 'results'),
): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  const key = (r: Record<string, unknown>): string =>
    `${String(r['case'])}|${String(r['provider'])}|${String(r['task'] ?? '')}|${String(r['threads'] ?? '')}|${String(r['machine'] ?? '')}`;
  const old: Record<string, unknown>[] = existsSync(file)
    ? (JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>[])
    : [];
  const fresh = new Set(rows.map(key));
  writeFileSync(file, JSON.stringify([...old.filter((r) => !fresh.has(key(r))), ...rows], null, 1) + '\n');
  return file;
}

/** `--name value` style options. */
export function argOf(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Max of process.memoryUsage().rss over the run of `fn`, sampled every `everyMs`. */
export async function withPeakRss<T>(fn: () => Promise<T>, everyMs = 20): Promise<{ value: T; peakRss: number }> {
  let peak = process.memoryUsage().rss;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), everyMs);
  try {
    const value = await fn();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { value, peakRss: peak };
  } finally {
    clearInterval(timer);
  }
}

/** Waits until a NATS server answers at `url` (a child just spawned); throws after about 10 s. */
export async function waitForNats(url: string): Promise<void> {
  for (let t = 0; ; t += 50) {
    try {
      const probe = await connectTransport(url, { timeoutMs: 500 });
      await probe.close();
      return;
    } catch (e) {
      if (t > 10_000) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A loopback TCP port free at the time of the call (for a private nats-server): the test support's. */
export { freePort } from '../libs/protocol/test/support/nats-server.js';

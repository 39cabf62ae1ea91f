import { RESULT_METHODS } from '../methods.js';
import { compareClients, type BytesPerRound, type ResultRow } from './results-json.js';

/**
 * The end-of-run results as fixed-width text tables for a terminal: one table of test loss and one of exact-match
 * accuracy, methods as rows (in RESULT_METHODS order) and clients as columns ('all' last), then the adapter bytes
 * exchanged per round. Missing cells print as '-'.
 */
export function formatResultsTable(rows: readonly ResultRow[], bytesPerRound?: BytesPerRound): string {
  const methods = RESULT_METHODS.filter((m) => rows.some((r) => r.method === m));
  const clients = [...new Set(rows.map((r) => r.client))].toSorted(compareClients);
  const cell = new Map(rows.map((r) => [`${r.method}\u0000${r.client}`, r]));
  const table = (title: string, value: (r: ResultRow) => string): string => {
    const header = ['method', ...clients];
    const body = methods.map((m) => [
      m,
      ...clients.map((c) => {
        const r = cell.get(`${m}\u0000${c}`);
        return r === undefined ? '-' : value(r);
      }),
    ]);
    return `${title}\n${renderGrid(header, body)}`;
  };
  const parts = [
    table('Test loss (nats/token, lower is better)', (r) => (r.test_loss === null ? '-' : r.test_loss.toFixed(4))),
    table('Exact-match accuracy (%)', (r) => (r.accuracy === null ? '-' : (100 * r.accuracy).toFixed(1))),
  ];
  if (bytesPerRound !== undefined) {
    parts.push(
      `Bytes per round (all selected clients together): down ${formatBytes(bytesPerRound.down)}, up ${formatBytes(bytesPerRound.up)}`,
    );
  }
  if (rows.length === 0) parts.unshift('(no evaluation results)');
  return parts.join('\n\n') + '\n';
}

/** Left-aligned first column, right-aligned numbers, '|' separators and a dashed rule under the header. */
function renderGrid(header: readonly string[], body: readonly (readonly string[])[]): string {
  // Every body row has a cell per header column (the caller builds them so).
  const widths = header.map((h, j) => Math.max(h.length, ...body.map((row) => row[j]!.length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!)))
      .join(' | ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('-+-');
  return [line(header), rule, ...body.map(line)].join('\n');
}

/** Bytes with binary units: 1536 -> "1.50 KiB (1536 B)". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const exact = `${Math.round(bytes)} B`;
  return u === 0 ? exact : `${v.toFixed(2)} ${units[u]} (${exact})`;
}

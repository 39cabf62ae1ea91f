import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { createInterface } from 'node:readline';

/** Calls `each` with every line of `input` that is a JSON object (a service's log records); other lines are skipped. */
export function onJsonLines(input: Readable, each: (r: Record<string, unknown>) => void): void {
  createInterface({ input }).on('line', (line) => {
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    each(r);
  });
}

/** The events of a run folder's metrics.jsonl. */
export const metricsOf = (runDir: string): Record<string, unknown>[] =>
  readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

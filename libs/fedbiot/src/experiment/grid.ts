/**
 * Experiment grids: a spec (methods x grid axes x seeds) expanded into cells, each cell one job run. Pure functions,
 * no processes: bin/experiment.ts schedules the cells, summary.ts reads their results.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';

const override = z.string().regex(/^[A-Za-z][\w.]*=/, 'an override path=value');

export const experimentSpecSchema = z
  .object({
    /** What the grid is for, shown in the summary. */
    description: z.string().optional(),
    /** Base job spec (YAML/JSON) relative to the experiment spec; absent: the built-in demo job (bin/main.ts). */
    config: z.string().min(1).optional(),
    /** Overrides for every cell. */
    set: z.array(override).default([]),
    /** Method name -> its overrides. One job run per method, grid point and seed. */
    methods: z.record(z.string().regex(/^[\w-]+$/, 'letters, digits, - and _'), z.array(override)),
    /** Job-spec path -> values: the axes of the grid (the cross product). */
    grid: z
      .record(z.string().regex(/^[A-Za-z][\w.]*$/), z.array(z.union([z.number(), z.string(), z.boolean()])).min(1))
      .default({}),
    /** job.seed values; at least 3 for an interval that means something. */
    seeds: z.array(z.number().int().nonnegative()).min(1),
    /**
     * Pairs compared in the verdict, as "method/result-row" labels (e.g. fedbiot/fedbiot-adapfu vs
     * offsite-same/offsite-tuning): the paired difference per (grid point, seed), mean and 95 % t interval.
     */
    compare: z.array(z.object({ treatment: z.string(), baseline: z.string() })).default([]),
    /** onnxruntime threads per run (model.threads); default 1, so N parallel runs use N cores. */
    threadsPerRun: z.number().int().positive().default(1),
  })
  .strict();

export type ExperimentSpec = z.infer<typeof experimentSpecSchema>;

export interface Cell {
  /** Folder-safe id: method, grid point, seed. */
  readonly id: string;
  readonly method: string;
  /** Grid point: axis path -> value. */
  readonly point: Readonly<Record<string, number | string | boolean>>;
  readonly seed: number;
  /** Every override of the run, in order: spec.set, grid point, method, seed (later wins). */
  readonly overrides: readonly string[];
}

export async function loadExperimentSpec(file: string): Promise<ExperimentSpec> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`, { cause: e });
  }
  const r = experimentSpecSchema.safeParse(raw);
  if (!r.success)
    throw new Error(
      `${file}: invalid experiment spec:\n${r.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n')}`,
    );
  if (Object.keys(r.data.methods).length === 0) throw new Error(`${file}: methods: name at least one method`);
  return r.data;
}

/** Label of a grid point, e.g. "dropRate=0.5 adapterLayers=2" (last path segment of each axis). */
export function pointLabel(point: Readonly<Record<string, unknown>>): string {
  const parts = Object.entries(point).map(([k, v]) => `${k.split('.').at(-1)}=${String(v)}`);
  return parts.length ? parts.join(' ') : 'default';
}

/** All cells, grid point-major then seed then method, so an interrupted grid has whole seeds of every method. */
export function expandGrid(spec: ExperimentSpec): Cell[] {
  let points: Record<string, number | string | boolean>[] = [{}];
  for (const [axis, values] of Object.entries(spec.grid))
    points = points.flatMap((p) => values.map((v) => ({ ...p, [axis]: v })));
  const cells: Cell[] = [];
  for (const point of points)
    for (const seed of spec.seeds)
      for (const [method, sets] of Object.entries(spec.methods)) {
        const pid = Object.entries(point)
          .map(([k, v]) => `${k.split('.').at(-1)}-${String(v)}`)
          .join('_')
          .replace(/[^\w.-]/g, '');
        cells.push({
          id: `${method}__${pid || 'default'}__s${seed}`,
          method,
          point,
          seed,
          overrides: [
            ...spec.set,
            ...Object.entries(point).map(([k, v]) => `${k}=${String(v)}`),
            ...sets,
            `job.seed=${seed}`,
          ],
        });
      }
  return cells;
}

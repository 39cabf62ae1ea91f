/**
 * KV `run`: where the aggregator wrote a finished job's run folder (on the model owner's machine), written once the
 * folder is complete. The evaluator's dashboard reads it to show the job as finished with the paths of its results.
 */
import { z } from 'zod';

export const RUN_RECORD_KEY = 'run' as const;

const path = z.string().min(1).max(4096);

export const RunRecordSchema = z.strictObject({
  jobId: z.string().min(1).max(200),
  /** The run folder, absolute. */
  dir: path,
  /** results.json, report.html, the PEFT adapter folder and the merged model folder, absolute. */
  results: path,
  report: path,
  adapter: path,
  mergedModel: path,
  rounds: z.int().min(1),
  finishedAt: z.int().min(0),
});
export type RunRecord = z.infer<typeof RunRecordSchema>;

/** The record of a run folder `dir` (absolute) whose job completed `rounds` rounds. */
export function runRecord(jobId: string, dir: string, rounds: number, finishedAt = Date.now()): RunRecord {
  return {
    jobId,
    dir,
    results: `${dir}/results.json`,
    report: `${dir}/report.html`,
    adapter: `${dir}/adapter`,
    mergedModel: `${dir}/merged-model`,
    rounds,
    finishedAt,
  };
}

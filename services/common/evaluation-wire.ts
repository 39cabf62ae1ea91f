/**
 * The evaluator's reply to an EvalRequest (aggregator -> evaluator on `fl.<job>.round.<r>.evaluate`): one row per
 * result row and client, as the standalone job's eval events, named in the method vocabulary (methods.ts).
 */
import { z } from 'zod';
import { PROTOCOL_VERSION, RequestErrorSchema, type EvalMode } from '../../libs/protocol/src/index.js';
import { BASE_ROW, resultRow, type Method, type ResultMethod } from '../../libs/fedbiot/src/index.js';

/** Pattern of every round's evaluation request (queue group `evaluator`). */
export function evaluatePattern(jobId: string): `fl.${string}.round.*.evaluate` {
  return `fl.${jobId}.round.*.evaluate`;
}

export const EvalRowSchema = z.strictObject({
  method: z.string().min(1),
  client: z.string().min(1),
  testLoss: z.number(),
  accuracy: z.number(),
  tokens: z.int().nonnegative(),
  items: z.int().nonnegative(),
});
export type EvalRow = z.infer<typeof EvalRowSchema>;
export const EvalOkSchema = z.strictObject({
  protocolVersion: z.literal(PROTOCOL_VERSION),
  jobId: z.string(),
  round: z.int().nonnegative(),
  rows: z.array(EvalRowSchema).min(1),
});
export const EvalReplySchema = z.union([EvalOkSchema, RequestErrorSchema]);
export type EvalReply = z.infer<typeof EvalReplySchema>;

/** The model variant an EvalRequest mode scores. */
export const EVAL_MODE_ON = { adapEmu: 'emu', adapFu: 'full', base: 'base' } as const satisfies Record<
  EvalMode,
  'emu' | 'full' | 'base'
>;

/** The result row of `method`'s adapter scored in `mode` (base: the base model's row). */
export function evalModeRow(method: Method, mode: EvalMode): ResultMethod {
  const on = EVAL_MODE_ON[mode];
  return on === 'base' ? BASE_ROW : resultRow(method, on);
}

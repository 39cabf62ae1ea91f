/**
 * Typed errors of libs/fedbiot. Each message names what is wrong (field, client, tensor, file) so a user can fix it
 * without reading code; structured fields carry the same facts for programs.
 */

/** A split configuration is impossible (e.g. adapter layers cover the whole model). `field` names the bad input. */
export class SplitConfigError extends Error {
  override readonly name = 'SplitConfigError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`split: ${field}: ${message}`);
  }
}

/** One reason an update cannot be aggregated. `tensor` is absent for whole-update problems (e.g. the norm bound). */
export interface UpdateProblem {
  readonly clientId: string;
  readonly tensor?: string;
  readonly kind: 'missing' | 'extra' | 'shape' | 'non-finite' | 'norm' | 'weight';
  readonly message: string;
}

/** One or more client updates failed validation; `problems` lists every one found, not only the first. */
export class UpdateRejectedError extends Error {
  override readonly name = 'UpdateRejectedError';
  constructor(readonly problems: readonly UpdateProblem[]) {
    super(
      `rejected update${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  ${formatProblem(p)}`).join('\n')}`,
    );
  }
}

/** `client <id>: tensor <name>: <message>` (the tensor part only when there is one). */
export function formatProblem(p: UpdateProblem): string {
  return `client ${p.clientId}: ${p.tensor === undefined ? '' : `tensor ${p.tensor}: `}${p.message}`;
}

/** Aggregation cannot produce a result (no updates, zero total weight). */
export class AggregationError extends Error {
  override readonly name = 'AggregationError';
}

/** Client sampling got an impossible request (bad fraction/count, empty or duplicate client ids). */
export class SamplingError extends Error {
  override readonly name = 'SamplingError';
}

/** One problem in a job specification: `<file>: <path.to.field>: <message>`. */
export interface JobSpecIssue {
  readonly file: string;
  /** Dotted path of the field; '' for the document itself or a syntax error. */
  readonly path: string;
  readonly message: string;
  /** 1-based position of a syntax error. */
  readonly line?: number;
  readonly col?: number;
}

/** `<file>: <path>: <message>`, or `<file>:<line>:<col>: <message>` for a syntax error. */
export function formatJobSpecIssue(i: JobSpecIssue): string {
  const where = i.line === undefined ? i.file : `${i.file}:${i.line}:${i.col ?? 1}`;
  return `${where}: ${i.path === '' ? '' : `${i.path}: `}${i.message}`;
}

/** A job specification is invalid. Lists every problem found in one pass. */
export class JobSpecError extends Error {
  override readonly name = 'JobSpecError';
  constructor(readonly issues: readonly JobSpecIssue[]) {
    super(
      `invalid job specification (${issues.length} problem${issues.length === 1 ? '' : 's'}):\n` +
        issues.map((i) => `  ${formatJobSpecIssue(i)}`).join('\n'),
    );
  }
}

/** A run directory or checkpoint is unusable (exists when it should not, corrupt, config mismatch on resume). */
export class RunDirError extends Error {
  override readonly name = 'RunDirError';
}

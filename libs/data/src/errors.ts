/** One problem with one record: `file:line: reason`. */
export interface DatasetIssue {
  readonly file: string;
  readonly line: number;
  readonly reason: string;
}

/** How many issues a DatasetError message lists before it summarises the rest as a count. */
export const DEFAULT_MAX_LISTED_ISSUES = 20;

/**
 * A dataset is unusable. Carries every issue found in one pass (not just the first), so a job fails before
 * training starts with the full list of lines to fix. `issues` holds them all; the message lists the first
 * `maxListed` and the count of the rest.
 */
export class DatasetError extends Error {
  override readonly name = 'DatasetError';
  readonly issues: readonly DatasetIssue[];

  constructor(summary: string, issues: readonly DatasetIssue[], maxListed = DEFAULT_MAX_LISTED_ISSUES) {
    const listed = issues.slice(0, maxListed).map((i) => `  ${i.file}:${i.line}: ${i.reason}`);
    const rest = issues.length - listed.length;
    if (rest > 0) listed.push(`  ... and ${rest} more`);
    super(listed.length > 0 ? `${summary}\n${listed.join('\n')}` : summary);
    this.issues = issues;
  }
}

/** A partition cannot satisfy its constraints (e.g. a client would end up without examples). */
export class PartitionError extends Error {
  override readonly name = 'PartitionError';
}

/** An example cannot be turned into tokens (no response, template mismatch, no room within maxLength). */
export class TokenizationError extends Error {
  override readonly name = 'TokenizationError';
}

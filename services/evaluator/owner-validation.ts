/**
 * The model owner's validation set (job spec `eval.ownerValidation`): JSONL files the owner holds, tokenized like a
 * client's test set (same template and maxLength), on which the owner's evaluator scores AdapFu in private mode.
 */
import { resolve } from 'node:path';
import {
  readJsonl,
  responseOf,
  tokenizeExample,
  tokenizePrompt,
  type TextTokenizer,
  type TokenizedExample,
} from '../../libs/data/src/index.js';
import type { EvalItem, JobSpec } from '../../libs/fedbiot/src/index.js';

/** The client column of rows scored on the owner's validation set. */
export const OWNER_ROW = 'owner';

export interface OwnerValidation {
  readonly files: readonly string[];
  readonly test: readonly TokenizedExample[];
  readonly testItems: readonly EvalItem[];
}

/** Reads and tokenizes every file of `spec.eval.ownerValidation`; errors name the field and the file. */
export async function loadOwnerValidation(spec: JobSpec, tokenizer: TextTokenizer): Promise<OwnerValidation> {
  const paths = spec.eval.ownerValidation;
  if (!paths) throw new Error("eval.ownerValidation: not set (private evaluation needs the owner's validation set)");
  const { maxLength, template } = spec.data;
  const test: TokenizedExample[] = [];
  const testItems: EvalItem[] = [];
  const files = paths.map((p) => resolve(p));
  for (const file of files) {
    let examples;
    try {
      examples = await readJsonl(file);
    } catch (e) {
      throw new Error(`eval.ownerValidation: ${file}: ${(e as Error).message}`, { cause: e });
    }
    if (examples.length === 0) throw new Error(`eval.ownerValidation: ${file} holds no example`);
    for (const ex of examples) {
      test.push(tokenizeExample(ex, tokenizer, { maxLength, template }));
      testItems.push({ prompt: tokenizePrompt(ex, tokenizer, { template, maxLength }), answer: responseOf(ex) });
    }
  }
  return { files, test, testItems };
}

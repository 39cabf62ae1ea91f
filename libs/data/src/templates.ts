import { TokenizationError } from './errors.js';
import type { ChatMessage, Example, TextTokenizer, TokenizedExample } from './types.js';

/**
 * Prompt templates. `alpaca`: the Stanford Alpaca prompt (alpaca records); `raw`: the prompt as-is
 * (prompt/completion records); `chat`: the tokenizer's chat template (chat records, or alpaca and prompt/completion
 * records turned into one user turn + one assistant turn); `auto`: alpaca -> alpaca, prompt/completion -> raw,
 * chat -> chat. Text examples have no prompt under any template.
 */
export type PromptTemplate = 'auto' | 'alpaca' | 'raw' | 'chat';

/** Stanford Alpaca `PROMPT_DICT["prompt_input"]` (tatsu-lab/stanford_alpaca train.py), verbatim. */
export const ALPACA_PROMPT_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:';

/** Stanford Alpaca `PROMPT_DICT["prompt_no_input"]`, verbatim. */
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:';

/**
 * The Alpaca prompt for an instruction and optional input. Like Stanford Alpaca (and FS-LLM) the response is
 * appended right after "### Response:" with no separator; training and generation both use this exact prompt.
 */
export function formatAlpacaPrompt(instruction: string, input = ''): string {
  // A function replacer: `$&`-style patterns in user text must not be interpreted.
  const fill = (t: string): string => t.replace('{instruction}', () => instruction).replace('{input}', () => input);
  return input.trim() === '' ? fill(ALPACA_PROMPT_NO_INPUT) : fill(ALPACA_PROMPT_INPUT);
}

/** The prompt and response strings of an example under a template. */
export interface RenderedExample {
  readonly prompt: string;
  readonly response: string;
}

/** Splits an example into prompt text and response text. Chat needs `tokenizer.applyChatTemplate`. */
export function renderExample(example: Example, template: PromptTemplate, tokenizer?: TextTokenizer): RenderedExample {
  const where = `${example.source.file}:${example.source.line}`;
  const t = template === 'auto' ? defaultTemplate(example) : template;
  switch (example.format) {
    case 'text':
      return { prompt: '', response: example.text };
    case 'alpaca':
      if (t === 'alpaca')
        return { prompt: formatAlpacaPrompt(example.instruction, example.input), response: example.output };
      if (t === 'chat')
        return renderChat(asChat(joinInput(example.instruction, example.input), example.output), tokenizer, where);
      break;
    case 'prompt-completion':
      if (t === 'raw') return { prompt: example.prompt, response: example.completion };
      if (t === 'chat') return renderChat(asChat(example.prompt, example.completion), tokenizer, where);
      break;
    case 'chat':
      if (t === 'chat') return renderChat(example.messages, tokenizer, where);
      break;
  }
  throw new TokenizationError(`${where}: template "${t}" does not apply to a ${example.format} record`);
}

/**
 * The record a generation prompt stands for under a template, so that tokenizePrompt gives exactly the tokens that
 * training put before a response: `alpaca` makes the text an instruction (with an optional input), `raw` a prompt
 * used as is, `chat` one user turn (or, given messages, the conversation so far).
 */
export function promptRecord(
  prompt: string | readonly ChatMessage[],
  template: Exclude<PromptTemplate, 'auto'>,
  opts: { readonly input?: string; readonly source?: string } = {},
): Example {
  const base = { extra: {}, source: { file: opts.source ?? 'prompt', line: 1 } };
  if (typeof prompt !== 'string') {
    if (template !== 'chat')
      throw new TokenizationError(`${base.source.file}: a conversation needs the chat template, not "${template}"`);
    // renderExample's chat prompt is every message but the last (the response being trained): an empty reply.
    return { ...base, format: 'chat', messages: [...prompt, { role: 'assistant', content: '' }] };
  }
  const input = opts.input ?? '';
  switch (template) {
    case 'alpaca':
      return { ...base, format: 'alpaca', instruction: prompt, input, output: '' };
    case 'raw':
      return { ...base, format: 'prompt-completion', prompt: joinInput(prompt, input), completion: '' };
    case 'chat':
      return { ...base, format: 'chat', messages: asChat(joinInput(prompt, input), '') };
  }
}

/** The reference response of an example (alpaca output, completion, last assistant turn, or the text). */
export function responseOf(example: Example): string {
  switch (example.format) {
    case 'alpaca':
      return example.output;
    case 'prompt-completion':
      return example.completion;
    case 'chat': {
      const last = example.messages.at(-1);
      if (last === undefined) {
        throw new RangeError(`responseOf: chat example ${example.source.file}:${example.source.line} has no messages`);
      }
      return last.content;
    }
    case 'text':
      return example.text;
  }
}

export interface TokenizeOptions {
  /** Maximum total tokens (BOS and EOS included); at least 2. */
  readonly maxLength: number;
  /** Default `auto`. */
  readonly template?: PromptTemplate;
  /** Prepend BOS unless the prompt already starts with it. Default: true when the tokenizer has a bosTokenId. */
  readonly addBos?: boolean;
  /** Append EOS unless the response already ends with it. Default: true when the tokenizer has an eosTokenId. */
  readonly addEos?: boolean;
}

/**
 * Tokenizes an example for supervised fine-tuning.
 *
 * Prompt and response are tokenized separately and concatenated, not tokenized as one string: BPE merges may
 * cross the prompt/response boundary (e.g. ":" + "4"), which would leave no token boundary where the response
 * starts, and the model would train on prompt tokens it never sees at generation time, where only the prompt
 * is tokenized. (With SentencePiece-style tokenizers the response then starts with its own word-start marker.)
 *
 * `lossMask[i]` is 1 when token i is a trained target, predicted from tokens < i: every response token,
 * EOS included; never BOS or prompt tokens, and never position 0 (nothing predicts it). Shifting labels by one
 * is left to the model. Text examples train on every token after the first.
 *
 * Truncation when prompt + response exceed maxLength: the response keeps everything unless that would shrink the
 * prompt below half of maxLength; the prompt is cut from the LEFT (keeping BOS), since its end ("### Response:",
 * the generation prompt) is what the response depends on most; then the response is cut from the RIGHT (its
 * EOS is lost, so a truncated example never teaches the model to stop early).
 */
export function tokenizeExample(example: Example, tokenizer: TextTokenizer, opts: TokenizeOptions): TokenizedExample {
  const where = `${example.source.file}:${example.source.line}`;
  const { maxLength } = opts;
  if (!Number.isInteger(maxLength) || maxLength < 2) {
    throw new TokenizationError(`${where}: maxLength must be an integer >= 2, got ${maxLength}`);
  }
  const { prompt, response } = renderExample(example, opts.template ?? 'auto', tokenizer);
  const promptIds = withBos(encodePlain(tokenizer, prompt), tokenizer, opts.addBos, where);
  const responseIds = encodePlain(tokenizer, response);
  const addEos = opts.addEos ?? tokenizer.eosTokenId !== undefined;
  if (addEos) {
    const eos = requireId(tokenizer.eosTokenId, 'eosTokenId', where);
    if (responseIds[responseIds.length - 1] !== eos) responseIds.push(eos);
  }
  if (responseIds.length === 0) throw new TokenizationError(`${where}: the response has no tokens`);

  let keptPrompt = promptIds;
  let keptResponse = responseIds;
  if (promptIds.length + responseIds.length > maxLength) {
    const promptBudget = Math.min(promptIds.length, Math.max(maxLength - responseIds.length, Math.ceil(maxLength / 2)));
    keptPrompt = leftTruncate(promptIds, promptBudget, tokenizer.bosTokenId);
    keptResponse = responseIds.slice(0, maxLength - keptPrompt.length);
  }
  const inputIds = [...keptPrompt, ...keptResponse];
  const lossMask = inputIds.map((_, i) => (i >= keptPrompt.length && i > 0 ? 1 : 0));
  return {
    inputIds,
    lossMask,
    promptLength: keptPrompt.length,
    truncatedPromptTokens: promptIds.length - keptPrompt.length,
    truncatedResponseTokens: responseIds.length - keptResponse.length,
  };
}

export interface PromptTokenizeOptions {
  /** Left-truncate the prompt (keeping BOS) to at most this many tokens. Default: no limit. */
  readonly maxLength?: number;
  readonly template?: PromptTemplate;
  readonly addBos?: boolean;
}

/** The prompt tokens alone, exactly as tokenizeExample puts them before the response: the input for generation. */
export function tokenizePrompt(example: Example, tokenizer: TextTokenizer, opts: PromptTokenizeOptions = {}): number[] {
  const where = `${example.source.file}:${example.source.line}`;
  const { prompt } = renderExample(example, opts.template ?? 'auto', tokenizer);
  const ids = withBos(encodePlain(tokenizer, prompt), tokenizer, opts.addBos, where);
  return opts.maxLength === undefined ? ids : leftTruncate(ids, opts.maxLength, tokenizer.bosTokenId);
}

function defaultTemplate(example: Example): Exclude<PromptTemplate, 'auto'> {
  switch (example.format) {
    case 'alpaca':
      return 'alpaca';
    case 'chat':
      return 'chat';
    default:
      return 'raw';
  }
}

function joinInput(instruction: string, input: string): string {
  return input.trim() === '' ? instruction : `${instruction}\n\n${input}`;
}

function asChat(user: string, assistant: string): ChatMessage[] {
  return [
    { role: 'user', content: user },
    { role: 'assistant', content: assistant },
  ];
}

/** Prompt = history with the generation prompt; response = what the full rendering adds after it. */
function renderChat(
  messages: readonly ChatMessage[],
  tokenizer: TextTokenizer | undefined,
  where: string,
): RenderedExample {
  if (!tokenizer?.applyChatTemplate) {
    throw new TokenizationError(`${where}: the chat template needs a tokenizer with applyChatTemplate (chat_template)`);
  }
  const prompt = tokenizer.applyChatTemplate(messages.slice(0, -1), { addGenerationPrompt: true });
  const full = tokenizer.applyChatTemplate(messages, { addGenerationPrompt: false });
  if (!full.startsWith(prompt)) {
    throw new TokenizationError(
      `${where}: the chat template renders the conversation without the generation prompt as a prefix, ` +
        'so the response cannot be separated from the prompt',
    );
  }
  return { prompt, response: full.slice(prompt.length) };
}

function encodePlain(tokenizer: TextTokenizer, text: string): number[] {
  return text === '' ? [] : tokenizer.encode(text, { addSpecialTokens: false });
}

function withBos(ids: number[], tokenizer: TextTokenizer, addBos: boolean | undefined, where: string): number[] {
  if (!(addBos ?? tokenizer.bosTokenId !== undefined)) return ids;
  const bos = requireId(tokenizer.bosTokenId, 'bosTokenId', where);
  return ids[0] === bos ? ids : [bos, ...ids];
}

function requireId(id: number | undefined, name: string, where: string): number {
  if (id === undefined) throw new TokenizationError(`${where}: the tokenizer has no ${name}`);
  return id;
}

function leftTruncate(ids: readonly number[], budget: number, bos: number | undefined): number[] {
  if (ids.length <= budget) return ids.slice();
  const keepBos = bos !== undefined && ids[0] === bos && budget > 0;
  return keepBos ? [bos, ...ids.slice(ids.length - (budget - 1))] : ids.slice(ids.length - budget);
}

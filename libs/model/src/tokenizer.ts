/**
 * Hugging Face tokenizers from a model folder (tokenizer.json + tokenizer_config.json), fully offline, through
 * `@huggingface/tokenizers`; chat templates (Jinja) through `@huggingface/jinja`, the implementation
 * transformers.js uses.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { TokenizerError } from './errors.js';

export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

export interface TextTokenizer {
  /** Token ids of `text`. addSpecialTokens (default true) applies the post-processor (e.g. a leading BOS). */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`. skipSpecialTokens (default false) drops special tokens such as BOS/EOS. */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number;
  /** tokenizer_config's pad_token; falls back to the EOS token when none is set (the usual causal-LM choice). */
  readonly padTokenId?: number;
  /** Largest token id + 1, added tokens included: the minimum embedding rows a model needs for this tokenizer. */
  readonly vocabSize: number;
  /** Whether a chat template is available (applyChatTemplate throws otherwise). */
  readonly hasChatTemplate: boolean;
  /**
   * Renders the chat template with `messages`, `add_generation_prompt` and the special-token strings
   * (bos_token, eos_token, pad_token, unk_token), as transformers' apply_chat_template(tokenize=False) does.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options?: { addGenerationPrompt?: boolean }): string;
}

/** tokenizer_config.json writes special tokens either as a string or as an AddedToken object. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return undefined;
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new TokenizerError(file, `cannot read (${(e as Error).message})`, { cause: e });
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new TokenizerError(file, `not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Picks the template: chat_template.jinja (newer transformers) over tokenizer_config's chat_template (a string,
 * or a list of {name, template} from which 'default' is used). */
async function findChatTemplate(
  dir: string,
  cfg: Record<string, unknown>,
  cfgFile: string,
): Promise<string | undefined> {
  const jinjaFile = join(dir, 'chat_template.jinja');
  if (existsSync(jinjaFile)) return readFile(jinjaFile, 'utf8');
  const t = cfg['chat_template'];
  if (t === undefined || t === null) return undefined;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const d = t.find((x: unknown) => (x as { name?: unknown })?.name === 'default') as
      { template?: unknown } | undefined;
    if (typeof d?.template === 'string') return d.template;
  }
  throw new TokenizerError(cfgFile, 'chat_template is neither a string nor a list with a "default" entry');
}

/**
 * Loads the tokenizer in `dir`. tokenizer.json is required; tokenizer_config.json is optional (no special-token
 * names, no chat template without it).
 * @throws TokenizerError naming the file for unreadable or inconsistent files (e.g. a bos_token not in the vocab).
 */
export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const root = resolve(dir);
  const tokFile = join(root, 'tokenizer.json');
  const cfgFile = join(root, 'tokenizer_config.json');
  const tokJson = await readJson(tokFile);
  const cfg = existsSync(cfgFile) ? await readJson(cfgFile) : {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokJson, cfg);
  } catch (e) {
    throw new TokenizerError(tokFile, `cannot build the tokenizer (${(e as Error).message})`, { cause: e });
  }

  const special: Record<string, string> = {};
  const ids: Record<string, number | undefined> = {};
  for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
    const s = tokenString(cfg[key]);
    if (s === undefined) continue;
    const id = tok.token_to_id(s);
    if (id === undefined)
      throw new TokenizerError(cfgFile, `${key} ${JSON.stringify(s)} is not in the vocabulary of tokenizer.json`);
    special[key] = s;
    ids[key] = id;
  }
  const padId = ids['pad_token'] ?? ids['eos_token'];
  let maxId = -1;
  for (const id of tok.get_vocab(true).values()) maxId = Math.max(maxId, id);

  const templateText = await findChatTemplate(root, cfg, cfgFile);
  let template: Template | undefined;
  if (templateText !== undefined) {
    try {
      template = new Template(templateText);
    } catch (e) {
      throw new TokenizerError(cfgFile, `chat_template does not parse (${(e as Error).message})`, { cause: e });
    }
  }

  return {
    ...(ids['bos_token'] === undefined ? {} : { bosTokenId: ids['bos_token'] }),
    ...(ids['eos_token'] === undefined ? {} : { eosTokenId: ids['eos_token'] }),
    ...(padId === undefined ? {} : { padTokenId: padId }),
    vocabSize: maxId + 1,
    hasChatTemplate: template !== undefined,
    encode(text, options = {}) {
      return tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
    },
    decode(idList, options = {}) {
      // The library rejects an empty list; the text of no tokens is ''.
      if (idList.length === 0) return '';
      return tok.decode([...idList], { skip_special_tokens: options.skipSpecialTokens ?? false });
    },
    applyChatTemplate(messages, options = {}) {
      if (template === undefined)
        throw new TokenizerError(
          cfgFile,
          'no chat_template (tokenizer_config.json) or chat_template.jinja in this folder',
        );
      try {
        return template.render({
          ...special,
          messages: messages.map((m) => ({ role: m.role, content: m.content })),
          add_generation_prompt: options.addGenerationPrompt ?? false,
        });
      } catch (e) {
        throw new TokenizerError(cfgFile, `chat_template failed to render (${(e as Error).message})`, { cause: e });
      }
    },
  };
}

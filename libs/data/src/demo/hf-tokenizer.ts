import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import type { ChatMessage, TextTokenizer } from '../types.js';

/**
 * A TextTokenizer over @huggingface/tokenizers for tokenizer.json + tokenizer_config.json objects: what the demo
 * needs to count tokens and what tests use to check the written files. Special token ids come from the config's
 * bos/eos/pad token strings; the chat template (if any) is rendered with @huggingface/jinja.
 */
export function createHfTokenizer(tokenizerJson: object, tokenizerConfig: Record<string, unknown>): TextTokenizer {
  const tok = new Tokenizer(tokenizerJson, tokenizerConfig);
  const idOf = (key: string): number | undefined => {
    const v = tokenizerConfig[key];
    const content = typeof v === 'string' ? v : (v as { content?: string } | undefined)?.content;
    return content === undefined ? undefined : tok.token_to_id(content);
  };
  const bos = idOf('bos_token');
  const eos = idOf('eos_token');
  const pad = idOf('pad_token');
  const source = tokenizerConfig.chat_template;
  const template = typeof source === 'string' ? new Template(source) : undefined;
  return {
    bosTokenId: bos,
    eosTokenId: eos,
    padTokenId: pad,
    encode: (text, opts) => tok.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? true }).ids,
    // tokenizers.js rejects an empty id list; an empty list decodes to "".
    decode: (ids, opts) =>
      ids.length === 0 ? '' : tok.decode([...ids], { skip_special_tokens: opts?.skipSpecialTokens ?? false }),
    ...(template && {
      applyChatTemplate: (messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }) =>
        template.render({
          messages,
          add_generation_prompt: opts.addGenerationPrompt,
          bos_token: tokenizerConfig.bos_token,
          eos_token: tokenizerConfig.eos_token,
        }),
    }),
  };
}

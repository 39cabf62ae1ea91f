/**
 * The tokenizer libs/data needs, declared structurally so that this lib imports no other lib.
 * libs/model's tokenizer satisfies it; so does the adapter in `demo/hf-tokenizer.ts`.
 */
export interface TextTokenizer {
  /** Token ids of `text`. `addSpecialTokens` (tokenizer default when omitted) adds e.g. BOS via the post-processor. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number;
  readonly padTokenId?: number;
  /** Renders a conversation with the model's chat template (the `chat_template` of tokenizer_config.json). */
  applyChatTemplate?(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): string;
}

/** One turn of a conversation. */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

/** Where an example came from: the file and its 1-based line (first line of a paragraph for text files). */
export interface ExampleSource {
  readonly file: string;
  readonly line: number;
}

/** Record formats the readers understand. `text` is plain text for public corpora / language modelling. */
export const EXAMPLE_FORMATS = ['alpaca', 'prompt-completion', 'chat', 'text'] as const;
export type ExampleFormat = (typeof EXAMPLE_FORMATS)[number];

/** JSON values kept from a record's extra fields (e.g. `category`, `label`) for partitioners and reports. */
export type JsonValue = string | number | boolean | null | readonly JsonValue[] | { readonly [k: string]: JsonValue };

interface ExampleBase {
  /** Top-level fields of the record other than the format's own, e.g. `{ category: "open_qa" }`. */
  readonly extra: Readonly<Record<string, JsonValue>>;
  readonly source: ExampleSource;
}

/** Stanford Alpaca record: `instruction`, optional `input` ("" when absent), `output`. */
export interface AlpacaExample extends ExampleBase {
  readonly format: 'alpaca';
  readonly instruction: string;
  readonly input: string;
  readonly output: string;
}

/** Raw prompt/completion record; the prompt is used as-is, the completion is the trained response. */
export interface PromptCompletionExample extends ExampleBase {
  readonly format: 'prompt-completion';
  readonly prompt: string;
  readonly completion: string;
}

/** Chat record; the last message is the assistant response that is trained, earlier ones are the prompt. */
export interface ChatExample extends ExampleBase {
  readonly format: 'chat';
  readonly messages: readonly ChatMessage[];
}

/** Plain text document: every token is trained (language modelling on public data). */
export interface TextExample extends ExampleBase {
  readonly format: 'text';
  readonly text: string;
}

export type Example = AlpacaExample | PromptCompletionExample | ChatExample | TextExample;

/** An example as token ids; `lossMask[i]` is 1 where token i is a trained target. */
export interface TokenizedExample {
  readonly inputIds: number[];
  readonly lossMask: number[];
  /** Number of leading tokens (BOS included) that belong to the prompt; 0 for text examples. */
  readonly promptLength: number;
  /** Tokens dropped from the left of the prompt to fit `maxLength`. */
  readonly truncatedPromptTokens: number;
  /** Tokens dropped from the right of the response (EOS included) to fit `maxLength`. */
  readonly truncatedResponseTokens: number;
}

/** A split of examples over clients: client `id` holds the examples at `indices` (ascending). */
export interface ClientShard {
  readonly id: string;
  readonly indices: readonly number[];
}
export type Partition = readonly ClientShard[];

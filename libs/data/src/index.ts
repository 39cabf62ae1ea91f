/**
 * libs/data: dataset readers, prompt templates, tokenization with loss masks, batching, partitioners and the
 * built-in demo federation. Independent of every other lib; tokenizers come in through `TextTokenizer`.
 */
export type {
  AlpacaExample,
  ChatExample,
  ChatMessage,
  ClientShard,
  Example,
  ExampleFormat,
  ExampleSource,
  JsonValue,
  Partition,
  PromptCompletionExample,
  TextExample,
  TextTokenizer,
  TokenizedExample,
} from './types.js';
export { EXAMPLE_FORMATS } from './types.js';
export { DatasetError, PartitionError, TokenizationError, type DatasetIssue } from './errors.js';
export {
  CHAT_ROLES,
  parseJsonl,
  parseText,
  readDataset,
  readJsonl,
  readText,
  readUtf8,
  MAX_LINE_BYTES,
  type ReadCommonOptions,
  type DatasetReadOptions,
  type JsonlReadOptions,
  type RecordFormat,
  type TextReadOptions,
} from './readers.js';
export {
  ALPACA_PROMPT_INPUT,
  ALPACA_PROMPT_NO_INPUT,
  formatAlpacaPrompt,
  promptRecord,
  renderExample,
  responseOf,
  tokenizeExample,
  tokenizePrompt,
  type PromptTemplate,
  type PromptTokenizeOptions,
  type RenderedExample,
  type TokenizeOptions,
} from './templates.js';
export { chunkCorpus, packBatch, type ChunkOptions, type PackedBatch, type PackOptions } from './batch.js';
export {
  labelsOf,
  partitionByField,
  partitionDirichlet,
  partitionIid,
  selectShards,
  trainTestSplit,
  type ByFieldOptions,
  type DirichletOptions,
  type SplitOptions,
  type SplitResult,
} from './partition.js';
export { createRng, sampleDirichlet, shuffled, type Rng } from './rng.js';
export {
  buildDemoTokenizer,
  DEMO_CHAT_TEMPLATE,
  DEMO_FORMAT_TEXTS,
  DEMO_SPECIAL_IDS,
  DEMO_SPECIAL_TOKENS,
  hfSpecialToken,
  type DemoTokenizerFiles,
  type DemoTokenizerOptions,
} from './demo/bpe.js';
export { generatePublicCorpus, DEFAULT_CORPUS_BYTES, type CorpusOptions } from './demo/corpus.js';
export { exactMatch, firstNumber } from './demo/exact-match.js';
export {
  generateDemoFederation,
  writeDemoFederation,
  type DemoClientData,
  type DemoFederation,
  type DemoFederationOptions,
  type DemoFileEntry,
  type DemoManifest,
} from './demo/federation.js';
export { createHfTokenizer } from './demo/hf-tokenizer.js';
export { DEMO_TASK_IDS, solve as solveDemoProblem, type DemoRecord, type DemoTaskId } from './demo/tasks.js';
export { numberToWords } from './demo/words.js';
export {
  buildKnowledgeTokenizer,
  CLIENT_PEOPLE,
  COLOURS,
  generateKnowledgeCorpus,
  generateKnowledgeFederation,
  generateWorld,
  KNOWLEDGE_CLIENT_SPLITS,
  KNOWLEDGE_IID_CLIENT_IDS,
  KNOWLEDGE_PUBLIC_CORPORA,
  KNOWLEDGE_TASK_IDS,
  knowledgeCorpora,
  knowledgePretrainingTexts,
  knowledgePublicQuestions,
  knowledgePublicTexts,
  PRETRAINING_MIX_SEED,
  TOWNS,
  TRADES,
  writeKnowledgeFederation,
  type KnowledgeClientSplit,
  type KnowledgeFederationOptions,
  type KnowledgePublicCorpus,
  type KnowledgeRecord,
  type KnowledgeTaskId,
  type WorldPerson,
} from './demo/knowledge.js';

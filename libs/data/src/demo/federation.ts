import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createRng } from '../rng.js';
import { buildDemoTokenizer } from './bpe.js';
import { DEFAULT_CORPUS_BYTES, generatePublicCorpus } from './corpus.js';
import { DEMO_TASK_IDS, generateUnique, type DemoRecord, type DemoTaskId } from './tasks.js';

export interface DemoFederationOptions {
  /** Everything is a pure function of this seed. Default 0. */
  readonly seed?: number;
  /** Client tasks, one client each. Default all: add, sub, mul. */
  readonly tasks?: readonly DemoTaskId[];
  /** Training problems per client. Default 400. */
  readonly trainPerClient?: number;
  /** Held-out problems per client. Default 60. */
  readonly testPerClient?: number;
  /** Problems per task in the global test set (fresh, disjoint from every client split). Default 40. */
  readonly globalTestPerTask?: number;
  /** Public corpus size in UTF-8 bytes. Default 1.5 MB. */
  readonly corpusBytes?: number;
  /** Demo tokenizer vocabulary size (written by writeDemoFederation). Default 768. */
  readonly vocabSize?: number;
}

export interface DemoClientData {
  readonly id: DemoTaskId;
  readonly train: readonly DemoRecord[];
  readonly test: readonly DemoRecord[];
}

export interface DemoFederation {
  readonly clients: readonly DemoClientData[];
  readonly globalTest: readonly DemoRecord[];
  /** Public corpus paragraphs (written blank-line separated to public/corpus.txt). */
  readonly corpus: readonly string[];
}

const DEFAULTS = {
  seed: 0,
  tasks: DEMO_TASK_IDS,
  trainPerClient: 400,
  testPerClient: 60,
  globalTestPerTask: 40,
  corpusBytes: DEFAULT_CORPUS_BYTES,
  vocabSize: 768,
} as const;

type ResolvedOptions = Required<Omit<DemoFederationOptions, 'tasks'>> & { tasks: readonly DemoTaskId[] };

/** Fills defaults (an explicit `undefined` means the default too) and rejects bad values by option name. */
function resolveOptions(opts: DemoFederationOptions): ResolvedOptions {
  const o: ResolvedOptions = {
    seed: opts.seed ?? DEFAULTS.seed,
    tasks: opts.tasks ?? DEFAULTS.tasks,
    trainPerClient: opts.trainPerClient ?? DEFAULTS.trainPerClient,
    testPerClient: opts.testPerClient ?? DEFAULTS.testPerClient,
    globalTestPerTask: opts.globalTestPerTask ?? DEFAULTS.globalTestPerTask,
    corpusBytes: opts.corpusBytes ?? DEFAULTS.corpusBytes,
    vocabSize: opts.vocabSize ?? DEFAULTS.vocabSize,
  };
  for (const k of ['trainPerClient', 'testPerClient', 'globalTestPerTask', 'corpusBytes', 'vocabSize'] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 1)
      throw new RangeError(`demo federation: ${k} must be a positive integer, got ${o[k]}`);
  }
  if (!Number.isSafeInteger(o.seed) || Math.abs(o.seed) > 2 ** 40) {
    throw new RangeError(`demo federation: seed must be an integer within +-2^40, got ${o.seed}`);
  }
  const unknown = o.tasks.filter((t) => !DEMO_TASK_IDS.includes(t));
  if (o.tasks.length === 0 || unknown.length > 0 || new Set(o.tasks).size !== o.tasks.length) {
    throw new RangeError(
      `demo federation: tasks must be distinct ids among ${DEMO_TASK_IDS.join(', ')}, got ${JSON.stringify(o.tasks)}`,
    );
  }
  return o;
}

/**
 * The built-in federation in memory. Splits are disjoint by problem text; each part draws from its own seeded
 * stream (seed, part), so changing one size does not reshuffle the others.
 */
export function generateDemoFederation(opts: DemoFederationOptions = {}): DemoFederation {
  const o = resolveOptions(opts);
  const seen = new Map<DemoTaskId, Set<string>>(o.tasks.map((t) => [t, new Set<string>()]));
  const stream = (part: number): ReturnType<typeof createRng> => createRng(o.seed * 1000 + part);
  const clients = o.tasks.map((id, c) => ({
    id,
    train: generateUnique(id, o.trainPerClient, stream(10 + c), seen.get(id)!),
    test: generateUnique(id, o.testPerClient, stream(100 + c), seen.get(id)!),
  }));
  const globalRng = stream(1);
  const globalTest = o.tasks.flatMap((id) => generateUnique(id, o.globalTestPerTask, globalRng, seen.get(id)!));
  const corpus = generatePublicCorpus(stream(2), { targetBytes: o.corpusBytes });
  return { clients, globalTest, corpus };
}

const jsonl = (records: readonly DemoRecord[]): string => records.map((r) => JSON.stringify(r) + '\n').join('');
const pretty = (v: unknown): string => JSON.stringify(v, null, 2) + '\n';

export interface DemoFileEntry {
  /** Path relative to the federation directory. */
  readonly path: string;
  readonly sha256: string;
  readonly bytes: number;
  /** Records (JSONL) or paragraphs (text). */
  readonly count?: number;
}

export interface DemoManifest {
  readonly name: 'fedbiot-demo-federation';
  readonly version: 1;
  readonly seed: number;
  readonly options: ResolvedOptions;
  /** Record format of every JSONL file, and the extra field that names the task. */
  readonly format: 'alpaca';
  readonly labelField: 'category';
  readonly clients: readonly { id: DemoTaskId; train: DemoFileEntry; test: DemoFileEntry }[];
  readonly globalTest: DemoFileEntry;
  readonly publicCorpus: DemoFileEntry;
  /** Directory with tokenizer.json, tokenizer_config.json, special_tokens_map.json. */
  readonly tokenizer: { readonly dir: string; readonly vocabSize: number; readonly files: readonly DemoFileEntry[] };
}

/**
 * Writes the demo federation under `dir`: clients/<id>/{train,test}.jsonl, global/test.jsonl, public/corpus.txt,
 * tokenizer/{tokenizer.json,tokenizer_config.json,special_tokens_map.json} (trained on the public corpus only:
 * the model owner's tokenizer never sees private client data) and manifest.json with sizes and sha256 of every
 * file. Same options -> same bytes.
 */
export async function writeDemoFederation(dir: string, opts: DemoFederationOptions = {}): Promise<DemoManifest> {
  const o = resolveOptions(opts);
  const fed = generateDemoFederation(o);
  const write = async (rel: string, content: string, count?: number): Promise<DemoFileEntry> => {
    const path = join(dir, rel);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, content, 'utf8');
    const buf = Buffer.from(content, 'utf8');
    const entry = { path: rel, sha256: createHash('sha256').update(buf).digest('hex'), bytes: buf.length };
    return count === undefined ? entry : { ...entry, count };
  };

  const clients = [];
  for (const c of fed.clients) {
    clients.push({
      id: c.id,
      train: await write(`clients/${c.id}/train.jsonl`, jsonl(c.train), c.train.length),
      test: await write(`clients/${c.id}/test.jsonl`, jsonl(c.test), c.test.length),
    });
  }
  const globalTest = await write('global/test.jsonl', jsonl(fed.globalTest), fed.globalTest.length);
  const publicCorpus = await write('public/corpus.txt', fed.corpus.join('\n\n') + '\n', fed.corpus.length);
  const tk = buildDemoTokenizer(fed.corpus, o.vocabSize);
  const tokenizerFiles = [
    await write('tokenizer/tokenizer.json', pretty(tk.tokenizerJson)),
    await write('tokenizer/tokenizer_config.json', pretty(tk.tokenizerConfig)),
    await write('tokenizer/special_tokens_map.json', pretty(tk.specialTokensMap)),
  ];
  const manifest: DemoManifest = {
    name: 'fedbiot-demo-federation',
    version: 1,
    seed: o.seed,
    options: { ...o, tasks: [...o.tasks] },
    format: 'alpaca',
    labelField: 'category',
    clients,
    globalTest,
    publicCorpus,
    tokenizer: { dir: 'tokenizer', vocabSize: tk.vocabSize, files: tokenizerFiles },
  };
  await writeFile(join(dir, 'manifest.json'), pretty(manifest), 'utf8');
  return manifest;
}

/**
 * The job's data, loaded and tokenized before any training starts (a malformed line stops the job up front, with
 * file:line, never halfway): each client's private train/test examples, a global test set, and the server's
 * public corpus cut into language-modelling windows.
 *
 * Sources: 'demo' (the built-in federation, generated deterministically into a cache folder), a folder with a
 * manifest.json in the demo layout (pre-partitioned clients), or a folder with a pooled `train.jsonl` (+ optional
 * `test.jsonl`, `public.txt`) that is partitioned over clients by the job spec.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  chunkCorpus,
  labelsOf,
  partitionByField,
  partitionDirichlet,
  partitionIid,
  readJsonl,
  readText,
  responseOf,
  selectShards,
  tokenizeExample,
  tokenizePrompt,
  trainTestSplit,
  writeDemoFederation,
  type Example,
  type TextTokenizer,
  type TokenizedExample,
} from '../../data/src/index.js';
import type { JobSpec } from './job-spec.js';

/** A held-out example for exact-match scoring: the prompt tokens and the reference answer text. */
export interface EvalItem {
  readonly prompt: readonly number[];
  readonly answer: string;
}

export interface ClientData {
  readonly id: string;
  /**
   * Position in the federation's full client list (it seeds the client's data stream), the same whether all
   * clients are loaded or only some (`onlyClients`).
   */
  readonly index: number;
  readonly train: readonly TokenizedExample[];
  readonly test: readonly TokenizedExample[];
  readonly testItems: readonly EvalItem[];
}

export interface FederationData {
  readonly clients: readonly ClientData[];
  readonly global: { readonly test: readonly TokenizedExample[]; readonly testItems: readonly EvalItem[] };
  /** Public windows for server alignment (every token a target). */
  readonly publicWindows: readonly TokenizedExample[];
  /** Where the data came from, for the report. */
  readonly source: string;
}

/** Seed of a client's shuffled data stream (standalone and distributed runs must agree on it). */
export function clientStreamSeed(jobSeed: number, client: Pick<ClientData, 'index'>): number {
  return jobSeed * 1000 + client.index;
}

interface RawFederation {
  readonly clients: { id: string; index: number; train: Example[]; test: Example[] }[];
  readonly globalTest: Example[];
  readonly publicTexts: string[];
  readonly source: string;
}

/** Generates (once per seed) and returns the folder of the built-in demo federation. */
export async function demoFederationDir(cacheRoot: string, seed: number): Promise<string> {
  const dir = join(cacheRoot, 'demo-federation', `seed-${seed}`);
  if (!existsSync(join(dir, 'manifest.json'))) await writeDemoFederation(dir, { seed });
  return dir;
}

/** A part of the federation's data: clients' training sets, test sets (and the global test set), public corpus. */
export type FederationPart = 'train' | 'test' | 'public';
export const FEDERATION_PARTS: readonly FederationPart[] = ['train', 'test', 'public'];

/** What to load; by default everything. */
export interface LoadFederationOptions {
  /**
   * Load only these clients' data, and no global test set or public corpus: what a data owner's own trainer needs.
   * With a manifest, other clients' files are never opened (they need not exist on that machine).
   */
  readonly onlyClients?: readonly string[];
  /**
   * Read only these parts (default all): each service holds only what it uses, and with a manifest the other files
   * are never opened. The client list (ids, order) always comes from the manifest; parts not read are empty.
   */
  readonly parts?: readonly FederationPart[];
}

async function readManifestFederation(
  dir: string,
  only: ReadonlySet<string> | undefined,
  parts: ReadonlySet<FederationPart>,
): Promise<RawFederation> {
  const manifestPath = join(dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as {
    clients?: { id: string; train: { path: string }; test: { path: string } }[];
    globalTest?: { path: string };
    publicCorpus?: { path: string };
  };
  if (!Array.isArray(manifest.clients) || manifest.clients.length === 0) {
    throw new Error(`${manifestPath}: "clients" must list at least one client with train and test files`);
  }
  if (only) {
    const missing = [...only].filter((id) => !manifest.clients!.some((c) => c.id === id));
    if (missing.length > 0) throw new Error(`${manifestPath}: no client ${missing.join(', ')} in "clients"`);
  }
  const clients = [];
  for (const [index, c] of manifest.clients.entries()) {
    if (only && !only.has(c.id)) continue;
    clients.push({
      id: c.id,
      index,
      train: parts.has('train') ? await readJsonl(join(dir, c.train.path)) : [],
      test: parts.has('test') ? await readJsonl(join(dir, c.test.path)) : [],
    });
  }
  if (only) return { clients, globalTest: [], publicTexts: [], source: dir };
  const globalTest = !parts.has('test')
    ? []
    : manifest.globalTest
      ? await readJsonl(join(dir, manifest.globalTest.path))
      : clients.flatMap((c) => c.test);
  const publicTexts =
    parts.has('public') && manifest.publicCorpus
      ? (await readText(join(dir, manifest.publicCorpus.path))).map((t) => t.text)
      : [];
  return { clients, globalTest, publicTexts, source: dir };
}

/**
 * A pooled federation (one file, partitioned here: a simulation layout, so the pool is read whole) cut down to
 * `only`'s clients and to `parts`.
 */
function onlyThese(
  raw: RawFederation,
  only: ReadonlySet<string> | undefined,
  parts: ReadonlySet<FederationPart>,
  dir: string,
): RawFederation {
  if (only) {
    const missing = [...only].filter((id) => !raw.clients.some((c) => c.id === id));
    if (missing.length > 0)
      throw new Error(`data.federation: the partition of ${dir} has no client ${missing.join(', ')}`);
  }
  return {
    clients: raw.clients
      .filter((c) => !only || only.has(c.id))
      .map((c) => ({ ...c, train: parts.has('train') ? c.train : [], test: parts.has('test') ? c.test : [] })),
    globalTest: only || !parts.has('test') ? [] : raw.globalTest,
    publicTexts: only || !parts.has('public') ? [] : raw.publicTexts,
    source: dir,
  };
}

async function readPooledFederation(dir: string, spec: JobSpec): Promise<RawFederation> {
  const pool = await readJsonl(join(dir, 'train.jsonl'));
  const p = spec.data.partition;
  const seed = spec.job.seed;
  let parts;
  if (p.kind === 'iid') parts = partitionIid(pool.length, p.clients ?? 3, seed);
  else if (p.kind === 'dirichlet') parts = partitionDirichlet(labelsOf(pool, p.field!), p.clients ?? 3, p.alpha!, seed);
  else parts = partitionByField(labelsOf(pool, p.field!), p.clients ? { numClients: p.clients } : {});
  const clients = selectShards(pool, parts).map((s, i) => {
    const split = trainTestSplit(s.items, spec.data.testFraction || 0.1, seed + i);
    return { id: s.id, index: i, train: split.train, test: split.test };
  });
  const globalTest = existsSync(join(dir, 'test.jsonl'))
    ? await readJsonl(join(dir, 'test.jsonl'))
    : clients.flatMap((c) => c.test);
  const publicTexts = existsSync(join(dir, 'public.txt'))
    ? (await readText(join(dir, 'public.txt'))).map((t) => t.text)
    : [];
  return { clients, globalTest, publicTexts, source: dir };
}

export async function loadFederation(
  spec: JobSpec,
  tokenizer: TextTokenizer,
  cacheRoot: string,
  opts: LoadFederationOptions = {},
): Promise<FederationData> {
  const where = spec.data.federation;
  const dir = where === 'demo' ? await demoFederationDir(cacheRoot, spec.job.seed) : resolve(where);
  const only = opts.onlyClients === undefined ? undefined : new Set(opts.onlyClients);
  const parts = new Set(opts.parts ?? FEDERATION_PARTS);
  let raw: RawFederation;
  if (existsSync(join(dir, 'manifest.json'))) raw = await readManifestFederation(dir, only, parts);
  else if (existsSync(join(dir, 'train.jsonl')))
    raw = onlyThese(await readPooledFederation(dir, spec), only, parts, dir);
  else throw new Error(`data.federation: ${dir} has neither a manifest.json nor a train.jsonl`);
  if (spec.alignment.publicData && !only && parts.has('public'))
    raw = {
      ...raw,
      publicTexts: (await readText(resolve(spec.alignment.publicData), { setting: 'alignment.publicData' })).map(
        (t) => t.text,
      ),
    };
  const maxLength = spec.data.maxLength;
  const template = spec.data.template;
  const tok = (ex: Example): TokenizedExample => tokenizeExample(ex, tokenizer, { maxLength, template });
  const item = (ex: Example): EvalItem => ({
    prompt: tokenizePrompt(ex, tokenizer, { template, maxLength }),
    answer: responseOf(ex),
  });
  const publicWindows = raw.publicTexts.length > 0 ? chunkCorpus(raw.publicTexts, tokenizer, { seq: maxLength }) : [];
  return {
    clients: raw.clients.map((c) => ({
      id: c.id,
      index: c.index,
      train: c.train.map(tok),
      test: c.test.map(tok),
      testItems: c.test.map(item),
    })),
    global: { test: raw.globalTest.map(tok), testItems: raw.globalTest.map(item) },
    publicWindows,
    source: raw.source,
  };
}

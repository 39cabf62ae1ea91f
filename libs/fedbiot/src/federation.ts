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

interface RawFederation {
  readonly clients: { id: string; train: Example[]; test: Example[] }[];
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

async function readManifestFederation(dir: string): Promise<RawFederation> {
  const manifestPath = join(dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as {
    clients?: { id: string; train: { path: string }; test: { path: string } }[];
    globalTest?: { path: string };
    publicCorpus?: { path: string };
  };
  if (!Array.isArray(manifest.clients) || manifest.clients.length === 0) {
    throw new Error(`${manifestPath}: "clients" must list at least one client with train and test files`);
  }
  const clients = [];
  for (const c of manifest.clients) {
    clients.push({
      id: c.id,
      train: await readJsonl(join(dir, c.train.path)),
      test: await readJsonl(join(dir, c.test.path)),
    });
  }
  const globalTest = manifest.globalTest
    ? await readJsonl(join(dir, manifest.globalTest.path))
    : clients.flatMap((c) => c.test);
  const publicTexts = manifest.publicCorpus
    ? (await readText(join(dir, manifest.publicCorpus.path))).map((t) => t.text)
    : [];
  return { clients, globalTest, publicTexts, source: dir };
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
    return { id: s.id, train: split.train, test: split.test };
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
): Promise<FederationData> {
  const where = spec.data.federation;
  const dir = where === 'demo' ? await demoFederationDir(cacheRoot, spec.job.seed) : resolve(where);
  let raw: RawFederation;
  if (existsSync(join(dir, 'manifest.json'))) raw = await readManifestFederation(dir);
  else if (existsSync(join(dir, 'train.jsonl'))) raw = await readPooledFederation(dir, spec);
  else throw new Error(`data.federation: ${dir} has neither a manifest.json nor a train.jsonl`);
  if (spec.alignment.publicData)
    raw = { ...raw, publicTexts: (await readText(resolve(spec.alignment.publicData))).map((t) => t.text) };
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
      train: c.train.map(tok),
      test: c.test.map(tok),
      testItems: c.test.map(item),
    })),
    global: { test: raw.globalTest.map(tok), testItems: raw.globalTest.map(item) },
    publicWindows,
    source: raw.source,
  };
}

/**
 * The job's data, loaded and tokenized before any training starts (a malformed line stops the job up front, with
 * file:line, never halfway): each client's private train/test examples, a global test set, and the server's
 * public corpus cut into language-modelling windows.
 *
 * Sources: 'demo' (the built-in federation, generated deterministically into a cache folder), a folder (or the
 * path of its manifest.json) with a manifest.json naming each client's files (docs/own-data.md; the zod schema is
 * `manifestSchema` below, its JSON Schema docs/federation-manifest.schema.json), or a folder with a pooled
 * `train.jsonl` (+ optional `test.jsonl`, `public.txt`) that is partitioned over clients by the job spec.
 *
 * Reading (readFederation: every file, partition and public-data check) is separate from tokenizing so that a job
 * can check all its inputs before it creates a run folder or loads a model.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
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
  type JsonlReadOptions,
  type TextTokenizer,
  type TokenizedExample,
} from '../../data/src/index.js';
import { ID_PATTERN } from '../../protocol/src/index.js';
import type { JobSpec } from './job-spec.js';
import { alignmentSteps, methodsRun } from './methods.js';

/** The federation's data cannot be used as given; the message names the file and the field. */
export class FederationError extends Error {
  override readonly name = 'FederationError';
}

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

/** The federation's records as read and checked, not yet tokenized (readFederation). */
export interface FederationRecords {
  readonly clients: readonly { id: string; index: number; train: Example[]; test: Example[] }[];
  readonly globalTest: Example[];
  readonly publicTexts: string[];
  /**
   * Public instruction records (a .jsonl public corpus): aligned on as the clients' examples look, rendered by the
   * job's template, every real token counted. Public text and records may both be empty, not both needed.
   */
  readonly publicRecords: Example[];
  readonly source: string;
}

/**
 * A public corpus file: plain text (paragraphs separated by blank lines, cut into windows) or, for `.jsonl` /
 * `.ndjson`, instruction records in any record format the clients' files accept.
 */
async function readPublicData(
  file: string,
  opts: JsonlReadOptions & { setting: string },
): Promise<{ publicTexts: string[]; publicRecords: Example[] }> {
  const ext = extname(file).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return { publicTexts: [], publicRecords: await readJsonl(file, opts) };
  return { publicTexts: (await readText(file, { setting: opts.setting })).map((t) => t.text), publicRecords: [] };
}

// ---------------------------------------------------------------------------------------------------------------
// manifest.json

/**
 * A file of the federation: a path relative to the manifest's folder (or absolute), as a string or as an object
 * whose `path` it is. The other fields are what writeDemoFederation records; they describe the file and are not
 * checked (sha256 would cost a second read of every file on every start).
 */
const EMPTY_PATH = "an empty path; expected a file path relative to the manifest's folder";
const fileRefSchema = z
  .union(
    [
      z.string().min(1, EMPTY_PATH),
      z.strictObject({
        path: z.string().min(1, EMPTY_PATH).describe("Relative to the manifest's folder, or absolute."),
        sha256: z
          .string()
          .regex(/^[0-9a-f]{64}$/)
          .optional()
          .describe('Descriptive (written by the demo generator); not checked.'),
        bytes: z.number().int().min(0).optional().describe('Descriptive; not checked.'),
        count: z.number().int().min(0).optional().describe('Records or paragraphs; descriptive, not checked.'),
      }),
    ],
    {
      error: (iss) =>
        `expected a file path relative to the manifest's folder, as a string ("clients/a/train.jsonl") or an object ` +
        `({"path": "clients/a/train.jsonl"}, optionally with "sha256", "bytes", "count"); got ${JSON.stringify(iss.input)}`,
    },
  )
  .meta({
    id: 'file',
    description: 'A file: its path relative to the manifest\'s folder (or absolute), as a string or as {"path": ...}.',
  });
export type ManifestFileRef = z.output<typeof fileRefSchema>;

const manifestClientSchema = z.strictObject({
  /** Client id: also a NATS subject token and a folder name in distributed runs, hence the narrow alphabet. */
  id: z
    .string({ error: 'expected the client id as a string, e.g. "hospital-a"' })
    .regex(ID_PATTERN, 'must be 1-64 characters of letters, digits, "_" or "-", starting with a letter or digit')
    .describe('Client id (also a NATS subject token in distributed runs).'),
  train: fileRefSchema.describe("The client's training examples (JSONL)."),
  test: fileRefSchema
    .optional()
    .describe("The client's held-out examples (JSONL); absent: data.testFraction of train, split with the job's seed."),
});

/**
 * The zod schema of a federation's manifest.json. Unknown keys are errors (a misspelt "publicCorpus" must not
 * silently leave the job without public data); the demo generator's descriptive keys (name, version, seed, options,
 * labelField, tokenizer) are allowed and ignored.
 */
export const manifestSchema = z
  .strictObject({
    $schema: z.string().optional().describe('Where an editor finds this JSON Schema.'),
    name: z.string().optional().describe('Descriptive.'),
    description: z.string().optional().describe('Descriptive.'),
    version: z.number().int().optional().describe('Descriptive.'),
    format: z
      .enum(['auto', 'alpaca', 'prompt-completion', 'chat'])
      .optional()
      .describe('Record format of every JSONL file (data.format in the job spec wins); absent: detected per line.'),
    labelField: z.string().optional().describe("The record field that names an example's task (descriptive)."),
    seed: z.number().optional().describe('Written by the demo generator; ignored.'),
    options: z.unknown().optional().describe('Written by the demo generator; ignored.'),
    tokenizer: z.unknown().optional().describe('Written by the demo generator; ignored.'),
    clients: z
      .array(manifestClientSchema, { error: 'expected a list of clients: [{"id": ..., "train": ..., "test": ...}]' })
      .min(1, 'must list at least one client')
      .describe("The data owners, in a fixed order (a client's position seeds its data stream)."),
    globalTest: fileRefSchema
      .optional()
      .describe("The model owner's held-out set (JSONL); absent: the clients' test sets pooled."),
    publicCorpus: fileRefSchema
      .optional()
      .describe('Public text for emulator alignment (plain text, paragraphs separated by blank lines).'),
  })
  .superRefine((m, ctx) => {
    const seen = new Set<string>();
    m.clients.forEach((c, i) => {
      if (seen.has(c.id)) ctx.addIssue({ code: 'custom', path: ['clients', i, 'id'], message: `"${c.id}" repeats` });
      seen.add(c.id);
    });
  });
export type FederationManifest = z.output<typeof manifestSchema>;

/** The JSON Schema of manifest.json (what docs/federation-manifest.schema.json holds; a test keeps them equal). */
export function manifestJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(manifestSchema, { io: 'input', target: 'draft-2020-12' }),
    title: 'fedbiot-ts federation manifest.json',
    description:
      "A federation: each client's JSONL files, an optional global test set and public corpus (docs/own-data.md).",
  };
}

const pathOf = (ref: ManifestFileRef): string => (typeof ref === 'string' ? ref : ref.path);

/** `clients[1].train` as written in messages. */
function showPath(p: readonly PropertyKey[]): string {
  return p.map((k, j) => (typeof k === 'number' ? `[${k}]` : `${j === 0 ? '' : '.'}${String(k)}`)).join('');
}

/**
 * Reads and validates a manifest.json.
 * @throws FederationError listing every problem as `<file>: <field>: <message>`.
 */
export async function readManifest(file: string): Promise<FederationManifest> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new FederationError(
      `${file}: ${(e as NodeJS.ErrnoException).code ? 'cannot read' : 'not JSON'}: ${(e as Error).message}`,
    );
  }
  const r = manifestSchema.safeParse(doc);
  if (r.success) return r.data;
  const lines = r.error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => `${showPath([...i.path, k])}: unknown key (${expectedKeys(i.path)})`)
      : [`${showPath(i.path) || '(document)'}: ${i.message}`],
  );
  throw new FederationError(
    `${file}: invalid federation manifest (${lines.length} problem${lines.length === 1 ? '' : 's'}; format: docs/own-data.md):\n` +
      lines.map((l) => `  ${l}`).join('\n'),
  );
}

function expectedKeys(path: readonly PropertyKey[]): string {
  const keys =
    path.length === 0
      ? Object.keys(manifestSchema.shape)
      : path.length === 2 && path[0] === 'clients'
        ? Object.keys(manifestClientSchema.shape)
        : ['path', 'sha256', 'bytes', 'count'];
  return `expected one of: ${keys.join(', ')}`;
}

/** Where a federation lives: `dir` and, when it has one, its manifest file. */
function locate(where: string): { dir: string; manifest?: string } {
  const p = resolve(where);
  if (!existsSync(p)) throw new FederationError(`data.federation: ${p} does not exist`);
  if (statSync(p).isFile()) {
    if (basename(p) === 'train.jsonl') return { dir: dirname(p) };
    return { dir: dirname(p), manifest: p };
  }
  if (existsSync(join(p, 'manifest.json'))) return { dir: p, manifest: join(p, 'manifest.json') };
  if (existsSync(join(p, 'train.jsonl'))) return { dir: p };
  throw new FederationError(
    `data.federation: ${p} has neither a manifest.json (one file per client, docs/own-data.md) nor a pooled train.jsonl`,
  );
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

/** Options of readJsonl for the federation's files: the job spec's data.format, else the manifest's. */
function jsonlOptions(spec: JobSpec, manifest?: FederationManifest): JsonlReadOptions {
  const f = spec.data.format ?? manifest?.format;
  return f === undefined || f === 'text' ? {} : { format: f };
}

async function readManifestFederation(
  spec: JobSpec,
  dir: string,
  manifestPath: string,
  only: ReadonlySet<string> | undefined,
  parts: ReadonlySet<FederationPart>,
): Promise<FederationRecords> {
  const manifest = await readManifest(manifestPath);
  if (only) {
    const missing = [...only].filter((id) => !manifest.clients.some((c) => c.id === id));
    if (missing.length > 0) throw new FederationError(`${manifestPath}: no client ${missing.join(', ')} in "clients"`);
  }
  const at = (ref: ManifestFileRef): string => (isAbsolute(pathOf(ref)) ? pathOf(ref) : join(dir, pathOf(ref)));
  // Every file this load will open, checked before any is read: one message lists all that are missing.
  const needed: { field: string; ref: ManifestFileRef }[] = [];
  manifest.clients.forEach((c, i) => {
    if (only && !only.has(c.id)) return;
    const splitTrain = c.test === undefined && parts.has('test');
    if (parts.has('train') || splitTrain) needed.push({ field: `clients[${i}].train`, ref: c.train });
    if (c.test !== undefined && parts.has('test')) needed.push({ field: `clients[${i}].test`, ref: c.test });
  });
  if (!only && parts.has('test') && manifest.globalTest) needed.push({ field: 'globalTest', ref: manifest.globalTest });
  if (!only && parts.has('public') && manifest.publicCorpus && !spec.alignment.publicData)
    needed.push({ field: 'publicCorpus', ref: manifest.publicCorpus });
  const missing = needed.filter((n) => !existsSync(at(n.ref)));
  if (missing.length > 0) {
    throw new FederationError(
      `${manifestPath}: ${missing.length === 1 ? 'a file it names does' : 'files it names do'} not exist ` +
        `(paths are relative to the manifest's folder ${dir}):\n` +
        missing.map((m) => `  ${m.field}: ${at(m.ref)}`).join('\n'),
    );
  }
  const testFraction = spec.data.testFraction;
  const opts = jsonlOptions(spec, manifest);
  const clients = [];
  for (const [index, c] of manifest.clients.entries()) {
    if (only && !only.has(c.id)) continue;
    let train: Example[] = [];
    let test: Example[] = [];
    if (c.test === undefined) {
      if (parts.has('train') || parts.has('test')) {
        if (!(testFraction > 0)) {
          throw new FederationError(
            `${manifestPath}: clients[${index}] ("${c.id}") has no "test" file and data.testFraction is 0: give ` +
              `the client a test file or set data.testFraction (e.g. 0.1) to hold out part of its train file`,
          );
        }
        // Same seed rule as the pooled layout: every service that reads this client gets the same split.
        const all = await readJsonl(at(c.train), { ...opts, setting: `${manifestPath}: clients[${index}].train` });
        const split = trainTestSplit(all, testFraction, spec.job.seed + index);
        train = parts.has('train') ? split.train : [];
        test = parts.has('test') ? split.test : [];
      }
    } else {
      const setting = (f: string): string => `${manifestPath}: clients[${index}].${f}`;
      train = parts.has('train') ? await readJsonl(at(c.train), { ...opts, setting: setting('train') }) : [];
      test = parts.has('test') ? await readJsonl(at(c.test), { ...opts, setting: setting('test') }) : [];
    }
    clients.push({ id: c.id, index, train, test });
  }
  if (only) return { clients, globalTest: [], publicTexts: [], publicRecords: [], source: dir };
  const globalTest = !parts.has('test')
    ? []
    : manifest.globalTest
      ? await readJsonl(at(manifest.globalTest), { ...opts, setting: `${manifestPath}: globalTest` })
      : clients.flatMap((c) => c.test);
  const pub =
    parts.has('public') && manifest.publicCorpus && !spec.alignment.publicData
      ? await readPublicData(at(manifest.publicCorpus), { ...opts, setting: `${manifestPath}: publicCorpus` })
      : { publicTexts: [], publicRecords: [] };
  return { clients, globalTest, ...pub, source: dir };
}

/**
 * A pooled federation (one file, partitioned here: a simulation layout, so the pool is read whole) cut down to
 * `only`'s clients and to `parts`.
 */
function onlyThese(
  raw: FederationRecords,
  only: ReadonlySet<string> | undefined,
  parts: ReadonlySet<FederationPart>,
  dir: string,
): FederationRecords {
  if (only) {
    const missing = [...only].filter((id) => !raw.clients.some((c) => c.id === id));
    if (missing.length > 0)
      throw new FederationError(`data.federation: the partition of ${dir} has no client ${missing.join(', ')}`);
  }
  return {
    clients: raw.clients
      .filter((c) => !only || only.has(c.id))
      .map((c) => ({ ...c, train: parts.has('train') ? c.train : [], test: parts.has('test') ? c.test : [] })),
    globalTest: only || !parts.has('test') ? [] : raw.globalTest,
    publicTexts: only || !parts.has('public') ? [] : raw.publicTexts,
    publicRecords: only || !parts.has('public') ? [] : raw.publicRecords,
    source: dir,
  };
}

async function readPooledFederation(dir: string, spec: JobSpec): Promise<FederationRecords> {
  const opts = jsonlOptions(spec);
  const pool = await readJsonl(join(dir, 'train.jsonl'), opts);
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
    ? await readJsonl(join(dir, 'test.jsonl'), opts)
    : clients.flatMap((c) => c.test);
  const publicTexts =
    existsSync(join(dir, 'public.txt')) && !spec.alignment.publicData
      ? (await readText(join(dir, 'public.txt'))).map((t) => t.text)
      : [];
  return { clients, globalTest, publicTexts, publicRecords: [], source: dir };
}

/**
 * Emulator-alignment steps the job runs on public data (0: it needs none): before round 0 and after a round, summed
 * over the methods the job runs (FedBiOT aligns before and after every round; offsite-tuning once when
 * baselines.oneShotAlignSteps is set).
 */
export function publicDataSteps(spec: JobSpec): number {
  return methodsRun(spec.job.method, spec.baselines)
    .map((m) => alignmentSteps(m, spec.alignment, spec.baselines.oneShotAlignSteps))
    .reduce((n, s) => n + s.pre + s.perRound, 0);
}

/**
 * Reads and checks the federation's records without tokenizing them: the manifest against its schema, that every
 * named file exists, every dataset line, the partition, and that the public data alignment needs is there. Cheap
 * next to loading a model, so a job calls it before it creates its run folder.
 * @throws FederationError (or the readers' DatasetError / PartitionError) naming the file and the field.
 */
export async function readFederation(
  spec: JobSpec,
  cacheRoot: string,
  opts: LoadFederationOptions = {},
): Promise<FederationRecords> {
  const where = spec.data.federation;
  const { dir, manifest } =
    where === 'demo' ? { dir: await demoFederationDir(cacheRoot, spec.job.seed), manifest: undefined } : locate(where);
  const only = opts.onlyClients === undefined ? undefined : new Set(opts.onlyClients);
  const parts = new Set(opts.parts ?? FEDERATION_PARTS);
  const manifestPath = manifest ?? (where === 'demo' ? join(dir, 'manifest.json') : undefined);
  let raw =
    manifestPath !== undefined
      ? await readManifestFederation(spec, dir, manifestPath, only, parts)
      : onlyThese(await readPooledFederation(dir, spec), only, parts, dir);
  if (!only && parts.has('public')) {
    if (spec.alignment.publicData) {
      const file = resolve(spec.alignment.publicData);
      if (!existsSync(file)) throw new FederationError(`alignment.publicData: ${file} does not exist`);
      raw = { ...raw, ...(await readPublicData(file, { ...jsonlOptions(spec), setting: 'alignment.publicData' })) };
    }
    const steps = publicDataSteps(spec);
    if (steps > 0 && raw.publicTexts.length === 0 && raw.publicRecords.length === 0) {
      const where =
        manifestPath !== undefined
          ? `${manifestPath} names no "publicCorpus"`
          : `${dir} has no public.txt beside its pooled train.jsonl`;
      throw new FederationError(
        `alignment.publicData: not set, and ${where}; method ${spec.job.method} aligns the emulator on public text ` +
          `(${steps} steps). Set alignment.publicData to a plain-text file (paragraphs separated by blank lines) or a ` +
          `.jsonl of instruction records, ` +
          `add the public corpus to the federation, or set alignment.preRounds and alignment.stepsPerRound to 0 ` +
          `(no alignment: the emulator stays the dropped-layer copy)`,
      );
    }
  }
  return raw;
}

export async function loadFederation(
  spec: JobSpec,
  tokenizer: TextTokenizer,
  cacheRoot: string,
  opts: LoadFederationOptions = {},
): Promise<FederationData> {
  const raw = await readFederation(spec, cacheRoot, opts);
  const maxLength = spec.data.maxLength;
  const template = spec.data.template;
  const tok = (ex: Example): TokenizedExample => tokenizeExample(ex, tokenizer, { maxLength, template });
  const item = (ex: Example): EvalItem => ({
    prompt: tokenizePrompt(ex, tokenizer, { template, maxLength }),
    answer: responseOf(ex),
  });
  const publicWindows = [
    ...(raw.publicTexts.length > 0 ? chunkCorpus(raw.publicTexts, tokenizer, { seq: maxLength }) : []),
    ...raw.publicRecords.map(tok),
  ];
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

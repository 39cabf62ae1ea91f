import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { EXAMPLE_FORMATS, KNOWLEDGE_CLIENT_SPLITS, KNOWLEDGE_PUBLIC_CORPORA } from '../../data/src/index.js';
import { LORA_TARGETS } from '../../model/src/light.js';
import { JobSpecError, type JobSpecIssue } from './errors.js';
import { METHODS, RESULT_METHODS, evalMethodsFor, type Method, type ResultMethod } from './methods.js';
import { privacySection } from './privacy-spec.js';

/**
 * The job specification: one YAML/JSON document that says which model, data, method and hyper-parameters a
 * federated run uses. Unknown keys are errors (typos must not silently fall back to defaults), every problem is
 * reported at once as `<file>: <path.to.field>: <message>`, and every default lives in DEFAULTS.
 */

/** The seven LLaMA linears LoRA can target (PEFT module names), as libs/model defines them. */
export { LORA_TARGETS };

/** data.federation value that names the knowledge demo's federation (resolved per job seed by the job). */
export const KNOWLEDGE_FEDERATION = 'demo-knowledge';

/** Prompt templates, as libs/data names them ('auto' picks by record format; 'raw' is the prompt as-is). */
export const TEMPLATES = ['auto', 'alpaca', 'chat', 'raw'] as const;

/**
 * Every default of the job spec. Values follow the "Our decisions" block of docs/fedbiot-algorithm.md (split, LoRA,
 * lambda, mu, eps, weighting) and the reference configs (betas, alignment steps); sizes (rounds, steps, batch,
 * lengths) are small so that the built-in demo job finishes in minutes on two CPU cores.
 */
export const DEFAULTS = {
  job: { seed: 0, method: 'fedbiot' as Method, rounds: 5, outDir: 'runs' },
  model: { checkpoint: 'models/demo-llama', provider: 'cpu' as const, packageDtype: 'float32' as const },
  split: { adapterLayers: 2, adapterBottom: 0, offsiteTuningAdapterBottom: 2, dropRate: 0.2 },
  lora: { r: 8, alpha: 16, dropout: 0.05, targets: ['q_proj', 'v_proj'] as (typeof LORA_TARGETS)[number][] },
  data: {
    federation: 'demo',
    template: 'auto' as const,
    maxLength: 96,
    partition: { kind: 'iid' as const },
    testFraction: 0.1,
  },
  clients: {
    localSteps: 12,
    batchSize: 8,
    gradAccum: 1,
    lr: 5e-3,
    betas: [0.9, 0.95] as [number, number],
    weightDecay: 0.01,
    proxEps: 0,
  },
  alignment: { preRounds: 4, stepsPerRound: 5, lambda: 1, mu: 0, lr: 1e-3, batchSize: 8 },
  aggregation: {
    weighting: 'tokens' as const,
    normBound: 'adamw' as const,
    rule: 'fedavg' as const,
    trimFraction: 0.2,
    keepBlobRounds: 2,
  },
  eval: { every: 1, maxNewTokens: 8, mode: 'private' as const },
  baselines: { offsiteTuning: true, localOnly: true, fedavgLora: false },
} as const;

const posInt = () => z.number().int().min(1);
const nonNegInt = () => z.number().int().min(0);
const posNum = () => z.number().positive();
const fraction01 = () => z.number().gt(0).lte(1);
const D = DEFAULTS;

const jobSection = z.strictObject({
  /** Run directory name; absent: a timestamp plus random suffix. */
  id: z
    .string()
    .regex(
      /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/,
      'must be 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit',
    )
    .optional(),
  seed: z.number().int().default(D.job.seed),
  method: z.enum(METHODS).default(D.job.method),
  rounds: posInt().default(D.job.rounds),
  outDir: z.string().min(1).default(D.job.outDir),
});

const modelSection = z
  .strictObject({
    /** A Hugging Face model folder (config.json, safetensors, tokenizer.json). */
    checkpoint: z.string().min(1).default(D.model.checkpoint),
    provider: z.enum(['cpu', 'webgpu', 'cuda']).default(D.model.provider),
    /** onnxruntime intra-op threads; absent: the runtime's default. */
    threads: posInt().optional(),
    /**
     * Weight dtype of the emulator package shipped to clients in a distributed job: float32 is exact (clients compute
     * what the standalone job computes); bfloat16 / float16 halve the bytes at a small loss change (README).
     */
    packageDtype: z.enum(['float32', 'bfloat16', 'float16']).default(D.model.packageDtype),
    /**
     * Storage of the frozen weights in every process that trains or evaluates: float16 / bfloat16 halve their memory
     * (LoRA, gradients, optimizer state stay float32; README, "Half-precision frozen weights"); absent: float32.
     */
    weightsDtype: z.enum(['float32', 'bfloat16', 'float16']).optional(),
    /**
     * 'float16': activations in float16 between the matmuls too (the fast path on GPU providers; CausalLM
     * LoadOptions.activations); needs weightsDtype float16 or bfloat16. Absent: float32 activations.
     */
    activations: z.enum(['float32', 'float16']).optional(),
  })
  .superRefine((m, ctx) => {
    if (m.activations === 'float16' && (m.weightsDtype ?? 'float32') === 'float32')
      ctx.addIssue({
        code: 'custom',
        path: ['activations'],
        message: 'float16 activations need weightsDtype float16 or bfloat16',
      });
  });

const splitSection = z.strictObject({
  /** Top adapter layers (the last ones). */
  adapterLayers: posInt().default(D.split.adapterLayers),
  /** Bottom adapter layers; absent: 0, or 2 for method offsite-tuning. */
  adapterBottom: nonNegInt().optional(),
  /** Emulator layer-dropout rate beta. */
  dropRate: z.number().min(0).lt(1).default(D.split.dropRate),
});

function loraTargets() {
  return z
    .array(z.enum(LORA_TARGETS))
    .min(1)
    .refine((t) => new Set(t).size === t.length, 'targets must not repeat');
}

const loraSection = z.strictObject({
  r: posInt().default(D.lora.r),
  alpha: posNum().default(D.lora.alpha),
  dropout: z.number().min(0).lt(1).default(D.lora.dropout),
  targets: loraTargets().default(() => [...D.lora.targets]),
});

const partitionObject = z
  .strictObject({
    kind: z.enum(['iid', 'dirichlet', 'by-field']).default(D.data.partition.kind),
    /** Dirichlet concentration (kind dirichlet). */
    alpha: posNum().optional(),
    /** Record field holding the label or category (kind dirichlet or by-field). */
    field: z.string().min(1).optional(),
    /** Number of clients; absent for by-field: one per distinct value. */
    clients: posInt().optional(),
  })
  .superRefine((p, ctx) => {
    // Section-level, so these are reported together with problems elsewhere in the spec (zod skips a refinement
    // whose own object already failed, not one whose siblings did).
    const field = (kind: string): string =>
      `required when kind is ${kind}: the record field that holds each example's ${kind === 'by-field' ? 'client (one client per value)' : 'label'}, ` +
      `e.g. partition: {kind: ${kind}, field: category${kind === 'dirichlet' ? ', alpha: 0.5' : ''}}`;
    if (p.kind === 'dirichlet' && p.alpha === undefined)
      ctx.addIssue({ code: 'custom', path: ['alpha'], message: 'required when kind is dirichlet (e.g. 0.5)' });
    if (p.kind === 'dirichlet' && p.field === undefined)
      ctx.addIssue({ code: 'custom', path: ['field'], message: field('dirichlet') });
    if (p.kind === 'by-field' && p.field === undefined)
      ctx.addIssue({ code: 'custom', path: ['field'], message: field('by-field') });
    if (p.kind !== 'dirichlet' && p.alpha !== undefined)
      ctx.addIssue({ code: 'custom', path: ['alpha'], message: 'only applies to kind dirichlet' });
  });

/** `partition: iid` is shorthand for `partition: {kind: iid}` (by-field and dirichlet still need their field). */
const partitionSection = z.preprocess((v) => (typeof v === 'string' ? { kind: v } : v), partitionObject);

const dataSection = z.strictObject({
  /** 'demo' (the built-in federation) or a path to a federation folder or manifest. */
  federation: z.string().min(1).default(D.data.federation),
  /** Record format; absent: detected per record. */
  format: z.enum(EXAMPLE_FORMATS).optional(),
  template: z.enum(TEMPLATES).default(D.data.template),
  /** Tokens per training sequence (prompt + response). */
  maxLength: posInt().default(D.data.maxLength),
  partition: partitionSection.prefault({}),
  /** Held-out share of each client's data. */
  testFraction: z.number().min(0).lt(1).default(D.data.testFraction),
  /**
   * Knowledge demo only (federation demo-knowledge): the public corpus the server aligns the emulator on. 'general'
   * (what absent means): general text without the world's facts; 'pretraining': the owner's pretraining text, the
   * general text plus every fact statement and drill; 'task': the clients' question forms about the people no
   * client asks about, as instruction records (libs/data knowledge.ts KNOWLEDGE_PUBLIC_CORPORA). Optional,
   * not defaulted: specs without it resolve as before, so earlier runs still resume.
   */
  publicCorpus: z.enum(KNOWLEDGE_PUBLIC_CORPORA).optional(),
  /**
   * Knowledge demo only (federation demo-knowledge): how its records are dealt to the three clients. 'by-relation'
   * (what absent means): each client asks about one relation (town, colour, trade); 'iid': the same records dealt
   * so each client (iid-0, iid-1, iid-2) holds an equal share of all three relations, in training and test
   * (libs/data knowledge.ts KNOWLEDGE_CLIENT_SPLITS). Optional, not defaulted: earlier specs resolve as before.
   */
  knowledgeClients: z.enum(KNOWLEDGE_CLIENT_SPLITS).optional(),
});

const clientsSection = z.strictObject({
  perRound: z
    .strictObject({ fraction: fraction01().optional(), count: posInt().optional() })
    .refine((p) => p.fraction === undefined || p.count === undefined, 'give fraction or count, not both')
    .prefault({}),
  /** AdamW steps per round (K). */
  localSteps: posInt().default(D.clients.localSteps),
  batchSize: posInt().default(D.clients.batchSize),
  gradAccum: posInt().default(D.clients.gradAccum),
  lr: posNum().default(D.clients.lr),
  betas: z
    .tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)])
    .default((): [number, number] => [D.clients.betas[0], D.clients.betas[1]]),
  weightDecay: z.number().min(0).default(D.clients.weightDecay),
  /** eps of the proximal term eps * ||theta_A - theta_A^t||^2. */
  proxEps: z.number().min(0).default(D.clients.proxEps),
  maxGradNorm: posNum().optional(),
});

const alignmentSection = z.strictObject({
  /** Pre-alignment rounds R0 before round 0 (each stepsPerRound steps). */
  preRounds: nonNegInt().default(D.alignment.preRounds),
  /** Alignment steps E after every aggregation. */
  stepsPerRound: nonNegInt().default(D.alignment.stepsPerRound),
  /** Weight of the KL term. */
  lambda: z.number().min(0).default(D.alignment.lambda),
  /** Weight of the public-data cross-entropy. */
  mu: z.number().min(0).default(D.alignment.mu),
  lr: posNum().default(D.alignment.lr),
  batchSize: posInt().default(D.alignment.batchSize),
  /** Public dataset path; absent: the federation's public corpus. */
  publicData: z.string().min(1).optional(),
  /**
   * The emulator LoRA the server aligns, where it should differ from `lora` (the clients' adapter): rank, alpha,
   * targets; absent fields (and an absent section) take `lora`'s. More capacity here changes only the server's
   * alignment and the size of the emulator LoRA broadcast each round, not what clients train.
   */
  emulatorLora: z
    .strictObject({
      r: posInt().optional(),
      alpha: posNum().optional(),
      targets: loraTargets().optional(),
    })
    .optional(),
});

const aggregationSection = z.strictObject({
  weighting: z.enum(['tokens', 'examples', 'uniform']).default(D.aggregation.weighting),
  /** Reject client updates whose L2 norm exceeds this. */
  maxUpdateNorm: posNum().optional(),
  /** Aggregate once this many updates arrived and the deadline passed. */
  quorum: posInt().optional(),
  /** Round deadline in milliseconds. */
  deadlineMs: posInt().optional(),
  /**
   * Hostile-client defences. 'adamw': reject an update farther from the broadcast than the job's local AdamW
   * steps can move it (a bound no honest client can exceed; aggregate.ts adamwDeltaBound); 'off': no such bound.
   */
  normBound: z.enum(['adamw', 'off']).default(D.aggregation.normBound),
  /** Also reject updates farther from the broadcast than this many times the round's median distance. */
  relativeNormBound: z.number().gt(1).optional(),
  /** fedavg (weighted), or a robust coordinate-wise rule: trimmed-mean (Flower FedTrimmedAvg), median (FedMedian). */
  rule: z.enum(['fedavg', 'trimmed-mean', 'median']).default(D.aggregation.rule),
  /** trimmed-mean: fraction of values cut at each end of every coordinate. */
  trimFraction: z.number().min(0).lt(0.5).default(D.aggregation.trimFraction),
  /** Largest update blob the aggregator downloads (bytes); absent: twice the adapter LoRA's size plus 1 MiB. */
  maxUpdateBytes: posInt().optional(),
  /** JetStream max_bytes of each client's update bucket; absent: max(4, 2 x (keepBlobRounds + 1)) x maxUpdateBytes. */
  clientBucketBytes: posInt().optional(),
  /**
   * Distributed runs: blobs (broadcasts, updates) of rounds older than this many checkpoints are deleted from
   * JetStream; the blobs the last checkpoint refers to are always kept. 1 covers a resumed aggregator (it re-reads
   * only the last checkpoint's blobs and the re-run round's); the default 2 also covers server-alignment restarting
   * from its stored state before it persisted its latest call (that state names the previous call's emulator).
   */
  keepBlobRounds: posInt().default(D.aggregation.keepBlobRounds),
});

/**
 * Where a distributed job evaluates (the standalone job holds everything and always prints the full table):
 * - private: AdapFu (the full model) only on the model owner's side, on `ownerValidation`; AdapEmu on each client's
 *   own test set by that client's trainer, which publishes metrics only. Nobody but a client reads its data.
 * - simulation: the evaluator reads every client's test set and reports AdapEmu and AdapFu per client, as the
 *   standalone job does (experiments on one machine; never for real data owners).
 */
export const DISTRIBUTED_EVAL_MODES = ['private', 'simulation'] as const;
export type DistributedEvalMode = (typeof DISTRIBUTED_EVAL_MODES)[number];

const evalSection = z.strictObject({
  /** Evaluate every this many rounds. */
  every: posInt().default(D.eval.every),
  maxNewTokens: posInt().default(D.eval.maxNewTokens),
  /** Which result rows to evaluate; absent: base + the job's method + enabled baselines. */
  methods: z
    .array(z.enum(RESULT_METHODS))
    .min(1)
    .refine((m) => new Set(m).size === m.length, 'methods must not repeat')
    .optional(),
  /** Distributed jobs: private (default) or simulation; see DISTRIBUTED_EVAL_MODES. */
  mode: z.enum(DISTRIBUTED_EVAL_MODES).default(D.eval.mode),
  /**
   * The model owner's validation set (JSONL files in any record format of data.format), on which the owner's
   * evaluator scores AdapFu in private mode; absent: private mode reports no AdapFu. Ignored by the standalone job.
   */
  ownerValidation: z
    .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
    .transform((v) => (typeof v === 'string' ? [v] : v))
    .optional(),
});

const baselinesSection = z.strictObject({
  offsiteTuning: z.boolean().default(D.baselines.offsiteTuning),
  localOnly: z.boolean().default(D.baselines.localOnly),
  fedavgLora: z.boolean().default(D.baselines.fedavgLora),
  /** One-shot emulator alignment steps for the offsite-tuning baseline (FS-LLM FedOT); absent: none. */
  oneShotAlignSteps: posInt().optional(),
});

/** The zod schema of a job spec (input: the YAML/JSON document; output: with defaults, before method defaults). */
export const jobSpecSchema = z
  .strictObject({
    job: jobSection.prefault({}),
    model: modelSection.prefault({}),
    split: splitSection.prefault({}),
    lora: loraSection.prefault({}),
    data: dataSection.prefault({}),
    clients: clientsSection.prefault({}),
    alignment: alignmentSection.prefault({}),
    aggregation: aggregationSection.prefault({}),
    eval: evalSection.prefault({}),
    baselines: baselinesSection.prefault({}),
    /**
     * Client-level DP and secure aggregation of the adapter updates (privacy-spec.ts). Optional, not defaulted: a
     * spec without it resolves as before, so runs created earlier still resume (run-dir compares the configs).
     */
    privacy: privacySection.optional(),
  })
  .superRefine((s, ctx) => {
    const issue = (path: (string | number)[], message: string): void => {
      ctx.addIssue({ code: 'custom', path, message });
    };
    if (s.eval.methods !== undefined) {
      const available = new Set(evalMethodsFor(s.job.method, s.baselines));
      s.eval.methods.forEach((m, i) => {
        if (!available.has(m))
          issue(
            ['eval', 'methods', i],
            `"${m}" is not produced by this job (method ${s.job.method}; available: ${[...available].join(', ')})`,
          );
      });
    }
    if (s.data.publicCorpus !== undefined && s.data.federation !== KNOWLEDGE_FEDERATION)
      issue(
        ['data', 'publicCorpus'],
        `only applies to the knowledge demo (data.federation ${KNOWLEDGE_FEDERATION}, not ${JSON.stringify(s.data.federation)}); ` +
          'another federation names its public corpus in its manifest, or set alignment.publicData',
      );
    if (s.data.knowledgeClients !== undefined && s.data.federation !== KNOWLEDGE_FEDERATION)
      issue(
        ['data', 'knowledgeClients'],
        `only applies to the knowledge demo (data.federation ${KNOWLEDGE_FEDERATION}, not ${JSON.stringify(s.data.federation)}); ` +
          'another federation deals its clients in its manifest, or set data.partition',
      );
    if (s.data.publicCorpus !== undefined && s.alignment.publicData !== undefined)
      issue(
        ['data', 'publicCorpus'],
        "give data.publicCorpus or alignment.publicData, not both (alignment.publicData replaces the federation's public corpus)",
      );
    if (s.eval.mode === 'simulation' && s.eval.ownerValidation !== undefined)
      issue(['eval', 'ownerValidation'], "only used in mode private (simulation evaluates on the clients' test sets)");
  });

type ParsedSpec = z.output<typeof jobSpecSchema>;

/** A fully resolved job specification: every default filled, including the method-dependent ones. */
export type JobSpec = Omit<ParsedSpec, 'split' | 'eval'> & {
  split: Omit<ParsedSpec['split'], 'adapterBottom'> & { adapterBottom: number };
  eval: Omit<ParsedSpec['eval'], 'methods'> & { methods: ResultMethod[] };
};

/**
 * Parses the text of a job spec file: JSON for `.json`, YAML otherwise (YAML 1.2, a superset of JSON). An empty
 * document is `{}` (every default). Returns the raw document for applyOverrides / resolveJobSpec.
 * @throws JobSpecError listing every syntax error with line and column.
 */
export function parseJobSpec(text: string, file: string): unknown {
  if (extname(file).toLowerCase() === '.json') {
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new JobSpecError([{ file, path: '', message: `invalid JSON: ${(e as Error).message}` }]);
    }
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new JobSpecError(
      doc.errors.map((e) => {
        const at = e.linePos?.[0];
        const message = e.message.split('\n', 1)[0]!.replace(/ at line \d+, column \d+:?$/, '');
        return { file, path: '', message, ...(at === undefined ? {} : { line: at.line, col: at.col }) };
      }),
    );
  }
  return doc.toJS() ?? {};
}

/**
 * Returns a copy of `raw` with `path=value` overrides applied (e.g. `clients.lr=3e-5`, `job.rounds=3`,
 * `lora.targets=["q_proj","k_proj"]`). Values are parsed as JSON when they parse, else taken as text; a field that
 * only holds text (a path, an id, an enum) always takes the text, so `job.id=007` stays "007".
 * @throws JobSpecError naming each override whose path is not a field of the spec, or that lacks `=`.
 */
export function applyOverrides(raw: unknown, overrides: readonly string[], source = 'overrides'): unknown {
  if (raw != null && !isPlainObject(raw)) {
    throw new JobSpecError([
      { file: source, path: '', message: 'the job spec is not a mapping; overrides cannot apply' },
    ]);
  }
  const out: Record<string, unknown> = raw == null ? {} : structuredClone(raw);
  const issues: JobSpecIssue[] = [];
  for (const o of overrides) {
    const eq = o.indexOf('=');
    if (eq <= 0) {
      issues.push({ file: source, path: o, message: 'expected path=value' });
      continue;
    }
    const path = o.slice(0, eq).trim().split('.');
    const text = o.slice(eq + 1);
    const leaf = resolvePath(path);
    if (typeof leaf === 'string') {
      issues.push({ file: source, path: path.join('.'), message: leaf });
      continue;
    }
    let target: Record<string, unknown> = out;
    let ok = true;
    // split() gives at least one key; all but the last name sections.
    const last = path[path.length - 1]!;
    for (let i = 0; i < path.length - 1; i++) {
      const key = path[i]!;
      const next = target[key];
      if (next === undefined || next === null) target[key] = {};
      else if (typeof next === 'string' && path.slice(0, i + 1).join('.') === 'data.partition')
        target[key] = { kind: next }; // `partition: by-field` in the file, `--set data.partition.field=x` here
      else if (!isPlainObject(next)) {
        issues.push({
          file: source,
          path: path.slice(0, i + 1).join('.'),
          message: `is ${JSON.stringify(next)} in the spec, not a section; cannot set ${path.join('.')}`,
        });
        ok = false;
        break;
      }
      target = target[key] as Record<string, unknown>;
    }
    if (ok) target[last] = textOnly(leaf) ? text : parseValue(text);
  }
  if (issues.length > 0) throw new JobSpecError(issues);
  return out;
}

/**
 * Validates a raw job spec and fills every default, including split.adapterBottom (2 for offsite-tuning, else 0)
 * and eval.methods (evalMethodsFor). `source` names the file in messages.
 * @throws JobSpecError listing every problem as `<source>: <path>: <message>`.
 */
export function resolveJobSpec(raw: unknown, source: string): JobSpec {
  const r = jobSpecSchema.safeParse(raw ?? {});
  if (!r.success) throw new JobSpecError(r.error.issues.flatMap((i) => issueLines(i, source)));
  const s = r.data;
  const adapterBottom =
    s.split.adapterBottom ??
    (s.job.method === 'offsite-tuning' ? D.split.offsiteTuningAdapterBottom : D.split.adapterBottom);
  return {
    ...s,
    split: { ...s.split, adapterBottom },
    eval: { ...s.eval, methods: s.eval.methods ?? evalMethodsFor(s.job.method, s.baselines) },
  };
}

/** Reads, parses, overrides and resolves a job spec file. */
export async function loadJobSpec(file: string, overrides: readonly string[] = []): Promise<JobSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new JobSpecError([{ file, path: '', message: `cannot read: ${(e as Error).message}` }]);
  }
  // Paths written in the file are the file's (a config beside its data works from any folder); paths given as
  // overrides on the command line stay relative to the current folder, like any command-line path.
  const raw = applyOverrides(rebasePaths(parseJobSpec(text, file), dirname(resolve(file))), overrides);
  return resolveJobSpec(raw, overrides.length === 0 ? file : `${file} (with overrides)`);
}

/** The spec's path fields: relative ones in a spec file are resolved against the file's folder. */
export const PATH_FIELDS = [
  ['job', 'outDir'],
  ['model', 'checkpoint'],
  ['data', 'federation'],
  ['alignment', 'publicData'],
] as const;

/** A copy of `raw` with every relative path of PATH_FIELDS made absolute against `baseDir` ('demo' is no path). */
export function rebasePaths(raw: unknown, baseDir: string): unknown {
  if (!isPlainObject(raw)) return raw;
  const out: Record<string, unknown> = { ...raw };
  for (const [section, key] of PATH_FIELDS) {
    const sec = out[section];
    if (!isPlainObject(sec)) continue;
    const v = sec[key];
    if (typeof v !== 'string' || v === '' || isAbsolute(v) || (section === 'data' && v === 'demo')) continue;
    out[section] = { ...sec, [key]: resolve(baseDir, v) };
  }
  return out;
}

/**
 * Checks what the standalone job needs of the model folder (config.json, tokenizer.json) before any model work.
 * Cheap, so a job runs it before it creates its run folder.
 */
export function checkModelPath(spec: JobSpec): void {
  const dir = resolve(spec.model.checkpoint);
  if (!existsSync(dir)) {
    const hint =
      spec.model.checkpoint === D.model.checkpoint
        ? ' (the default, the demo model, is relative to the current folder: run from the fedbiot-ts folder or set model.checkpoint)'
        : '';
    throw new Error(`model.checkpoint: ${dir} does not exist${hint}`);
  }
  for (const f of ['config.json', 'tokenizer.json'])
    if (!existsSync(join(dir, f)))
      throw new Error(`model.checkpoint: ${dir} has no ${f} (expected a Hugging Face model folder with its tokenizer)`);
}

/** A zod issue path as written in messages: `lora.targets[1]`. */
function show(p: readonly PropertyKey[]): string {
  return p.map((k, j) => (typeof k === 'number' ? `[${k}]` : `${j === 0 ? '' : '.'}${String(k)}`)).join('');
}

function issueLines(i: z.core.$ZodIssue, file: string): JobSpecIssue[] {
  const path = i.path.map(String);
  if (i.code === 'unrecognized_keys') {
    const node = resolvePath(path);
    const allowed = typeof node === 'string' ? [] : Object.keys(objectShape(node) ?? {});
    return i.keys.map((k) => ({
      file,
      path: show([...i.path, k]),
      message: `unknown key${allowed.length > 0 ? ` (expected one of: ${allowed.join(', ')})` : ''}`,
    }));
  }
  return [{ file, path: show(i.path), message: i.message }];
}

// --- Schema navigation (for override paths and "expected one of" hints). ---

interface SchemaDef {
  readonly type: string;
  readonly innerType?: z.ZodType;
  /** A pipe's (preprocess's) output schema. */
  readonly out?: z.ZodType;
  readonly shape?: Record<string, z.ZodType>;
  readonly entries?: Record<string, unknown>;
}

function defOf(s: z.ZodType): SchemaDef {
  return (s as unknown as { def: SchemaDef }).def;
}

/** Strips optional/default/prefault/nullable wrappers and preprocessing (partition's shorthand). */
function unwrap(s: z.ZodType): z.ZodType {
  let cur = s;
  for (;;) {
    const d = defOf(cur);
    if (d.type === 'pipe' && d.out !== undefined) {
      cur = d.out;
      continue;
    }
    if (d.innerType === undefined || !['optional', 'default', 'prefault', 'nullable', 'readonly'].includes(d.type))
      return cur;
    cur = d.innerType;
  }
}

function objectShape(s: z.ZodType): Record<string, z.ZodType> | undefined {
  const u = unwrap(s);
  const d = defOf(u);
  return d.type === 'object' ? d.shape : undefined;
}

/** The schema at `path`, or a message saying why the path is not a field. */
function resolvePath(path: readonly string[]): z.ZodType | string {
  // In zod 4 superRefine adds a check to the object schema itself, so the root is still an object.
  let node: z.ZodType = jobSpecSchema;
  for (const [i, key] of path.entries()) {
    const shape = objectShape(node);
    const here = path.slice(0, i).join('.');
    if (shape === undefined) return `${here} is a value, not a section`;
    const field = Object.hasOwn(shape, key) ? shape[key] : undefined;
    if (key === '' || field === undefined) {
      return `unknown ${i === 0 ? 'section' : `key in ${here}`} "${key}" (expected one of: ${Object.keys(shape).join(', ')})`;
    }
    node = field;
  }
  return node;
}

function textOnly(s: z.ZodType): boolean {
  const t = defOf(unwrap(s)).type;
  return t === 'string' || t === 'enum';
}

function parseValue(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * `npm run model -- <command> [options]`: inspect, evaluate, run and package models of libs/model. Every command
 * has `--help`; the texts are in HELP below. --model may be a Hugging Face folder or an emulator package (a folder
 * with emulator_manifest.json) for generate, eval and inspect.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import {
  readPeftAdapter,
  CausalLM,
  type LoraWeights,
  fromPeftAdapter,
  loadTokenizer,
  type TextTokenizer as Tokenizer,
  openCheckpoint,
  pruneModelCache,
  defaultCacheRoot,
} from '../libs/model/src/index.js';
import {
  PACKAGE_DTYPES,
  buildEmulatorPackage,
  isEmulatorPackage,
  loadEmulatorPackage,
  type PackageDtype,
  type PackageManifest,
  TEMPLATES,
  CONFIG_FILE,
  splitModel,
  chunks,
  toTokenBatch,
} from '../libs/fedbiot/src/index.js';
import {
  chunkCorpus,
  promptRecord,
  readDataset,
  tokenizeExample,
  tokenizePrompt,
  type ChatMessage,
  type PromptTemplate,
  type TokenizedExample,
} from '../libs/data/src/index.js';
import type { ExecutionProvider } from '../libs/engine/src/index.js';

const COMMON = `  --model DIR        a Hugging Face model folder (config.json, *.safetensors) or an emulator package
  --provider P       cpu (default), webgpu or cuda`;

const HELP: Record<string, string> = {
  generate: `usage: npm run model -- generate --model DIR [--adapter DIR] (--prompt TEXT | --chat JSON) [options]

Generates a reply. The prompt is rendered the way training rendered examples, so a trained adapter sees what it
was trained on: --template auto (the default) uses the template recorded with the adapter or model (data.template
of the run's ${CONFIG_FILE} beside it; "auto" there means alpaca for a --prompt), and sends the prompt as is
when nothing is recorded. The template used is printed on stderr.

${COMMON}
  --adapter DIR      a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), e.g. runs/<id>/adapter
  --tokenizer DIR    a folder with tokenizer.json, for a model folder without one
  --prompt TEXT      the request (under alpaca: the instruction)
  --input TEXT       alpaca's optional input field
  --chat JSON        a conversation, e.g. '[{"role":"user","content":"Hi"}]' (uses the chat template)
  --template T       auto (default) | alpaca | chat | raw (raw: the prompt exactly as given)
  --max-new-tokens N 64
  --temperature T    0 (greedy)
  --top-p P          1
  --seed S           0`,
  eval: `usage: npm run model -- eval --model DIR [--adapter DIR] --data FILE [options]

Prints the mean loss per response token and the perplexity on a dataset: JSONL records (instruction/input/output,
prompt/completion or chat messages; the loss counts response tokens) or plain text (.txt: every token counts).

${COMMON}
  --adapter DIR      a PEFT LoRA adapter
  --tokenizer DIR    a folder with tokenizer.json, for a model folder without one
  --data FILE        .jsonl / .ndjson records or .txt / .md text
  --template T       auto (default: the one recorded with the adapter or model, else per record format) |
                     alpaca | chat | raw
  --max-length N     tokens per sequence, 128
  --batch B          sequences per forward pass, 8`,
  inspect: `usage: npm run model -- inspect --model DIR

Prints the architecture, parameter count, memory needs and tokenizer of a model (and, for an emulator package, the
layers it holds and those dropped).

${COMMON}`,
  package: `usage: npm run model -- package --model DIR --out DIR [options]

Cuts the emulator package a FedBiOT job ships to its clients (the aggregator does the same at job start):
embeddings, the kept lower layers (uniform layer dropout), the adapter layers, norm and head.

  --model DIR          the full Hugging Face model folder
  --out DIR            where to write the package
  --adapter-layers N   top layers kept whole as the adapter, 2
  --drop-rate R        share of the emulator's layers dropped, 0.2
  --dtype D            float32 (default) | bfloat16 | float16
  --job ID             the job id recorded in the manifest, "local"`,
  'prune-cache': `usage: npm run model -- prune-cache [--cache DIR] [--keep N] [--max-size SIZE] [--dry-run]

Frees disk in the model cache (fp32 weight conversions and weight versions under FEDBIOT_CACHE): old weight
versions first, then least recently used entries until the cache fits --max-size. Only the model cache is touched.

  --cache DIR        the cache root, default FEDBIOT_CACHE or ~/.cache/fedbiot
  --keep N           weight versions kept per file, 2
  --max-size SIZE    e.g. 20G, 512M or bytes; absent: no size limit
  --dry-run          print what would be removed, remove nothing`,
};

/** Options that take no value. */
const FLAGS: ReadonlySet<string> = new Set(['dry-run']);

const OPTIONS: Record<string, readonly string[]> = {
  generate: [
    'model',
    'provider',
    'adapter',
    'tokenizer',
    'prompt',
    'input',
    'chat',
    'template',
    'max-new-tokens',
    'temperature',
    'top-p',
    'seed',
  ],
  eval: ['model', 'provider', 'adapter', 'tokenizer', 'data', 'template', 'max-length', 'batch'],
  inspect: ['model', 'provider'],
  package: ['model', 'adapter-layers', 'drop-rate', 'dtype', 'job', 'out'],
  'prune-cache': ['cache', 'keep', 'max-size', 'dry-run'],
};

const OVERVIEW = `usage: npm run model -- <command> [options]   (npm run model -- <command> --help for its options)

  generate     generate a reply with a model, optionally with a LoRA adapter
  eval         loss and perplexity on a dataset
  inspect      architecture, parameters, memory, tokenizer
  package      cut a FedBiOT emulator package from a full model
  prune-cache  free disk in the model cache`;

const [command, ...args] = process.argv.slice(2);

/** `--name value` pairs of the command line; an unknown or valueless option is an error naming it. */
function parseOptions(cmd: string, argv: readonly string[]): Map<string, string> {
  const allowed = OPTIONS[cmd]!;
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.startsWith('--') ? a.slice(2) : undefined;
    if (name === undefined || !allowed.includes(name))
      throw new UsageError(`${cmd}: unknown ${name === undefined ? 'argument' : 'option'} ${a}`);
    if (FLAGS.has(name)) {
      out.set(name, 'true');
      continue;
    }
    const v = argv[i + 1];
    if (v === undefined) throw new UsageError(`${cmd}: ${a} needs a value`);
    out.set(name, v);
    i++;
  }
  return out;
}

class UsageError extends Error {}

/** `20G`, `512M`, `1.5T`, or plain bytes. */
function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`--max-size: ${text} is not a size like 20G, 512M or 1000000`);
  const unit = (m[2] ?? '').toUpperCase().charAt(0);
  const pow = unit === '' ? 0 : 'KMGT'.indexOf(unit) + 1;
  return Math.floor(Number(m[1]) * 1024 ** pow);
}

let opts = new Map<string, string>();
const opt = (name: string): string | undefined => opts.get(name);
const need = (name: string): string => {
  const v = opt(name);
  if (v === undefined) throw new UsageError(`${command}: --${name} is required`);
  return v;
};
const num = (name: string, fallback: number): number => {
  const v = opt(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n))
    throw new UsageError(`${command}: --${name} must be a number, got "${v}"`);
  return n;
};

/**
 * The model of --model: a Hugging Face folder, or an emulator package (verified, numbered like its source model,
 * so an adapter of the full model applies to it unchanged).
 */
async function open(): Promise<{ lm: CausalLM; loras: LoraWeights[]; pkg?: PackageManifest }> {
  const dir = need('model');
  const options = { provider: (opt('provider') ?? 'cpu') as ExecutionProvider, thread: 'main' as const };
  const { lm, manifest } = isEmulatorPackage(dir)
    ? await loadEmulatorPackage(dir, options)
    : { lm: await CausalLM.load(dir, options), manifest: undefined };
  const adapterDir = opt('adapter');
  const loras = adapterDir
    ? [
        fromPeftAdapter(
          await readPeftAdapter(adapterDir),
          lm.config,
          'default',
          `${adapterDir}/adapter_model.safetensors`,
          lm.allLayers,
        ),
      ]
    : [];
  return { lm, loras, ...(manifest ? { pkg: manifest } : {}) };
}

/** The tokenizer of --tokenizer, else the model's; an error names both places when there is none. */
async function tokenizerOf(lm: CausalLM): Promise<Tokenizer> {
  const dir = opt('tokenizer');
  if (dir !== undefined) {
    if (!existsSync(join(dir, 'tokenizer.json'))) throw new Error(`--tokenizer: ${dir} has no tokenizer.json`);
    return loadTokenizer(dir);
  }
  if (!lm.tokenizer)
    throw new Error(`${need('model')} has no tokenizer.json; give a folder that has one with --tokenizer DIR`);
  return lm.tokenizer;
}

/**
 * The template a job recorded for what --adapter (else --model) came from: data.template of the run's
 * config.resolved.json, which sits beside runs/<id>/adapter and runs/<id>/merged-model.
 */
function recordedTemplate(): { template: PromptTemplate; from: string } | undefined {
  for (const dir of [opt('adapter'), opt('model')]) {
    if (dir === undefined) continue;
    const file = join(dirname(resolve(dir)), CONFIG_FILE);
    if (!existsSync(file)) continue;
    const t = (JSON.parse(readFileSync(file, 'utf8')) as { data?: { template?: unknown } }).data?.template;
    if (typeof t === 'string' && (TEMPLATES as readonly string[]).includes(t))
      return { template: t as PromptTemplate, from: file };
  }
  return undefined;
}

function templateOption(): PromptTemplate {
  const t = opt('template') ?? 'auto';
  if (!(TEMPLATES as readonly string[]).includes(t))
    throw new UsageError(`${command}: --template must be one of ${TEMPLATES.join(', ')}, got "${t}"`);
  return t as PromptTemplate;
}

async function main(): Promise<void> {
  opts = parseOptions(command!, args);
  if (command === 'inspect') {
    const { lm, pkg } = await open();
    const c = lm.config;
    const params = lm.checkpoint!.parameterCount();
    const rows: [string, string][] = [
      ['model type', c.modelType],
      ['layers', String(c.numLayers)],
      ['hidden size', String(c.hiddenSize)],
      ['attention heads (kv)', `${c.numHeads} (${c.numKvHeads})`],
      ['head dim', String(c.headDim)],
      ['intermediate size', String(c.intermediateSize)],
      ['vocabulary', String(c.vocabSize)],
      ['tied embeddings', String(c.tieWordEmbeddings)],
      ['rope', `${c.rope.type}, theta ${c.ropeTheta}`],
      ['parameters', params.toLocaleString('en')],
      ['fp32 weights (memory-mapped once)', `${((params * 4) / 2 ** 20).toFixed(1)} MiB`],
      ['KV cache per token (fp32)', `${((2 * c.numLayers * c.numKvHeads * c.headDim * 4) / 1024).toFixed(1)} KiB`],
      [
        'tokenizer',
        lm.tokenizer ? `${lm.tokenizer.vocabSize} tokens, chat template: ${lm.tokenizer.hasChatTemplate}` : 'none',
      ],
    ];
    if (pkg)
      rows.push(
        ['emulator package of job', pkg.jobId],
        [
          'source model',
          `${pkg.source.modelType}, ${pkg.source.numLayers} layers, sha256 ${pkg.source.sha256.slice(0, 16)}…`,
        ],
        [
          'layers held (source numbering)',
          pkg.layers.map((l) => `${l.source}${l.role === 'adapter' ? '*' : ''}`).join(' ') + '  (* adapter)',
        ],
        ['dropped layers (not in the package)', pkg.droppedLayers.join(' ') || 'none'],
        ['package dtype', pkg.dtype],
        [
          'package bytes',
          `${(pkg.files.reduce((a, f) => a + f.bytes, 0) / 2 ** 20).toFixed(1)} MiB in ${pkg.files.length} files`,
        ],
      );
    for (const [k, v] of rows) console.log(`${k.padEnd(36)} ${v}`);
    await lm.release();
    return;
  }
  if (command === 'generate') {
    if ((opt('prompt') === undefined) === (opt('chat') === undefined))
      throw new UsageError('generate: give --prompt TEXT or --chat JSON (one of them)');
    const { lm, loras } = await open();
    try {
      const tok = await tokenizerOf(lm);
      const chat = opt('chat');
      let template = templateOption();
      let note = `--template ${template}`;
      if (template === 'auto') {
        const rec = recordedTemplate();
        // A job's "auto" renders instruction records with Alpaca, and a --prompt is an instruction.
        template = chat !== undefined ? 'chat' : rec ? (rec.template === 'auto' ? 'alpaca' : rec.template) : 'raw';
        note =
          chat !== undefined
            ? 'a --chat conversation'
            : rec
              ? `data.template ${rec.template} of ${rec.from}`
              : 'nothing recorded with the adapter or model: the prompt as given';
      }
      console.error(`template: ${template} (${note})`);
      const rec = recordedTemplate();
      if (chat !== undefined && rec && rec.template !== 'chat')
        // Why a conversation can get an empty reply: an adapter trained on Alpaca prompts has not seen the chat
        // template, and often answers it with its end-of-text token at once.
        console.error(
          `note: the adapter was trained with data.template ${rec.template} (${rec.from}); a --chat conversation ` +
            `uses the chat template, which it has not seen: --prompt TEXT renders it as in training`,
        );
      const messages = chat === undefined ? undefined : parseChat(chat);
      const record = promptRecord(messages ?? need('prompt'), template as Exclude<PromptTemplate, 'auto'>, {
        input: opt('input') ?? '',
        source: chat === undefined ? '--prompt' : '--chat',
      });
      // The prompt tokens exactly as training put them before a response (BOS once, template, no EOS).
      const ids = tokenizePrompt(record, tok, { template });
      const [out] = await lm.generate(
        [ids],
        {
          maxNewTokens: num('max-new-tokens', 64),
          temperature: num('temperature', 0),
          topP: num('top-p', 1),
          seed: num('seed', 0),
          ...(tok.eosTokenId !== undefined ? { eosTokenId: tok.eosTokenId } : {}),
        },
        { loras },
      );
      const text = tok.decode(out!, { skipSpecialTokens: true });
      // An empty reply is a reply (the model's first token was its end of text); say so rather than print nothing.
      if (text.trim() === '')
        console.error(`(empty reply: the model ended its answer at once; ${out!.length} token(s) generated)`);
      console.log(text);
    } finally {
      await lm.release();
    }
    return;
  }
  if (command === 'eval') {
    const { lm, loras } = await open();
    try {
      const tok = await tokenizerOf(lm);
      const maxLength = num('max-length', 128);
      const batch = num('batch', 8);
      let template = templateOption();
      if (opt('template') === undefined) template = recordedTemplate()?.template ?? 'auto';
      const examples = await readDataset(need('data'));
      const tokenized: TokenizedExample[] = examples.every((e) => e.format === 'text')
        ? chunkCorpus(
            examples.map((e) => (e as { text: string }).text),
            tok,
            { seq: maxLength },
          )
        : examples.map((e) => tokenizeExample(e, tok, { maxLength, template }));
      let nll = 0;
      let tokens = 0;
      for (const group of chunks(tokenized, batch)) {
        const r = await lm.lossSum(toTokenBatch(group, batch, maxLength, tok.padTokenId ?? 0), { loras });
        nll += r.nllSum;
        tokens += r.tokens;
      }
      console.log(
        `| examples | tokens | loss | perplexity |\n|---|---|---|---|\n| ${tokenized.length} | ${tokens} | ${(nll / tokens).toFixed(4)} | ${Math.exp(nll / tokens).toFixed(3)} |`,
      );
    } finally {
      await lm.release();
    }
    return;
  }
  if (command === 'package') {
    // The model owner's step: cut the emulator package a job would ship (the aggregator does the same at job start).
    const source = need('model');
    const { config } = await openCheckpoint(source);
    const split = splitModel({
      numLayers: config.numLayers,
      adapterBottom: 0,
      adapterTop: num('adapter-layers', 2),
      dropRate: num('drop-rate', 0.2),
    });
    const dtype = (opt('dtype') ?? 'float32') as PackageDtype;
    if (!(PACKAGE_DTYPES as readonly string[]).includes(dtype))
      throw new Error(`--dtype: ${dtype} is not one of ${PACKAGE_DTYPES.join(', ')}`);
    const t0 = performance.now();
    const m = await buildEmulatorPackage({ source, split, jobId: opt('job') ?? 'local', out: need('out'), dtype });
    const bytes = m.files.reduce((a, f) => a + f.bytes, 0);
    console.log(
      `emulator package ${need('out')}: layers ${m.layers.map((l) => l.source).join(',')} of ${m.source.numLayers} ` +
        `(dropped ${m.droppedLayers.join(',') || 'none'}), ${dtype}, ${(bytes / 2 ** 20).toFixed(1)} MiB, ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    return;
  }
  if (command === 'prune-cache') {
    const root = opt('cache') ?? defaultCacheRoot();
    const size = opt('max-size');
    const maxBytes = size === undefined ? undefined : parseSize(size);
    const keep = num('keep', 2);
    const dryRun = opts.has('dry-run');
    const r = pruneModelCache(root, {
      keepVersions: keep,
      ...(maxBytes === undefined ? {} : { maxBytes }),
      dryRun,
    });
    const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;
    for (const e of r.removed)
      console.log(`${dryRun ? 'would remove' : 'removed'} ${e.path} (${mib(e.bytes)}): ${e.reason}`);
    console.log(
      `${root}: ${r.removed.length} entries, ${mib(r.freedBytes)} freed; ${mib(r.keptBytes)} kept (model cache only)`,
    );
    return;
  }
}

/** A --chat value: a JSON list of {role, content} messages. */
function parseChat(text: string): ChatMessage[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--chat: not JSON (${(e as Error).message}); expected '[{"role":"user","content":"..."}]'`);
  }
  if (
    !Array.isArray(v) ||
    v.length === 0 ||
    !v.every((m) => typeof m?.role === 'string' && typeof m?.content === 'string')
  )
    throw new UsageError(`--chat: expected a non-empty list of {"role": ..., "content": ...} messages`);
  return v as ChatMessage[];
}

if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
  console.log(OVERVIEW);
  process.exit(command === undefined ? 2 : 0);
}
if (!(command in HELP)) {
  console.error(`unknown command "${command}"\n\n${OVERVIEW}`);
  process.exit(2);
}
if (args.includes('--help') || args.includes('-h')) {
  console.log(HELP[command]);
  process.exit(0);
}
main().catch((e: unknown) => {
  if (e instanceof UsageError) {
    console.error(`error: ${e.message} (npm run model -- ${command} --help)`);
    process.exit(2);
  }
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
});

/**
 * `npm run model -- <command>` for users of libs/model:
 *   generate --model DIR [--adapter DIR] (--prompt TEXT | --chat JSON) [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
 *   eval     --model DIR [--adapter DIR] --data FILE.jsonl|.txt [--max-length N] [--batch B]
 *   inspect  --model DIR
 *   package  --model DIR --out DIR [--adapter-layers 2] [--drop-rate 0.2] [--dtype float32|bfloat16|float16] [--job ID]
 *   prune-cache [--cache DIR] [--keep 2] [--max-size 20G] [--dry-run]   (model cache: old weight versions, LRU by size)
 * --model may be an emulator package (a folder with emulator_manifest.json) for generate, eval and inspect.
 */
import { readPeftAdapter } from '../libs/model/src/peft.js';
import { CausalLM, type LoraWeights } from '../libs/model/src/causal-lm.js';
import { fromPeftAdapter } from '../libs/model/src/adapters.js';
import {
  PACKAGE_DTYPES,
  buildEmulatorPackage,
  isEmulatorPackage,
  loadEmulatorPackage,
  type PackageDtype,
  type PackageManifest,
} from '../libs/fedbiot/src/emulator-package.js';
import { splitModel } from '../libs/fedbiot/src/split.js';
import { openCheckpoint } from '../libs/model/src/checkpoint.js';
import { pruneModelCache } from '../libs/model/src/cache-prune.js';
import { defaultCacheRoot } from '../libs/model/src/graph-store.js';
import { chunkCorpus, readDataset, tokenizeExample, type TokenizedExample } from '../libs/data/src/index.js';
import { chunks, toTokenBatch } from '../libs/fedbiot/src/batches.js';
import type { ExecutionProvider } from '../libs/engine/src/index.js';

const [command, ...args] = process.argv.slice(2);

/** `20G`, `512M`, `1.5T`, or plain bytes. */
function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(text.trim());
  if (!m) throw new Error(`--max-size: ${text} is not a size like 20G, 512M or 1000000`);
  const unit = (m[2] ?? '').toUpperCase().charAt(0);
  const pow = unit === '' ? 0 : 'KMGT'.indexOf(unit) + 1;
  return Math.floor(Number(m[1]) * 1024 ** pow);
}
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const need = (name: string): string => {
  const v = opt(name);
  if (v === undefined) throw new Error(`${command}: --${name} is required`);
  return v;
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

async function main(): Promise<void> {
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
    const { lm, loras } = await open();
    try {
      const tok = lm.tokenizer;
      if (!tok) throw new Error(`${need('model')} has no tokenizer.json`);
      const chat = opt('chat');
      const text = chat
        ? tok.applyChatTemplate(JSON.parse(chat) as { role: string; content: string }[], { addGenerationPrompt: true })
        : need('prompt');
      const ids = tok.encode(text, { addSpecialTokens: !chat });
      const [out] = await lm.generate(
        [ids],
        {
          maxNewTokens: Number(opt('max-new-tokens') ?? 64),
          temperature: Number(opt('temperature') ?? 0),
          topP: Number(opt('top-p') ?? 1),
          seed: Number(opt('seed') ?? 0),
        },
        { loras },
      );
      console.log(tok.decode(out!, { skipSpecialTokens: true }));
    } finally {
      await lm.release();
    }
    return;
  }
  if (command === 'eval') {
    const { lm, loras } = await open();
    try {
      const tok = lm.tokenizer;
      if (!tok) throw new Error(`${need('model')} has no tokenizer.json`);
      const maxLength = Number(opt('max-length') ?? 128);
      const batch = Number(opt('batch') ?? 8);
      const examples = await readDataset(need('data'));
      const tokenized: TokenizedExample[] = examples.every((e) => e.format === 'text')
        ? chunkCorpus(
            examples.map((e) => (e as { text: string }).text),
            tok,
            { seq: maxLength },
          )
        : examples.map((e) => tokenizeExample(e, tok, { maxLength }));
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
      adapterTop: Number(opt('adapter-layers') ?? 2),
      dropRate: Number(opt('drop-rate') ?? 0.2),
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
    const keep = Number(opt('keep') ?? 2);
    const r = pruneModelCache(root, {
      keepVersions: keep,
      ...(maxBytes === undefined ? {} : { maxBytes }),
      dryRun: args.includes('--dry-run'),
    });
    const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;
    for (const e of r.removed)
      console.log(
        `${args.includes('--dry-run') ? 'would remove' : 'removed'} ${e.path} (${mib(e.bytes)}): ${e.reason}`,
      );
    console.log(
      `${root}: ${r.removed.length} entries, ${mib(r.freedBytes)} freed; ${mib(r.keptBytes)} kept (model cache only)`,
    );
    return;
  }
  console.error(
    'usage: npm run model -- generate|eval|inspect|package|prune-cache --model DIR [...] (see bin/model.ts)',
  );
  process.exit(2);
}

main().catch((e: unknown) => {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
});

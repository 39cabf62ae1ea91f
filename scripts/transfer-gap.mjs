// The emulator-to-full-model gap of a finished run, measured where the adapter meets it: on the server's public text
// (what alignment trains on) and on each client's test questions (what the adapter is for). For every real token,
// the hidden state entering the adapter layers from the emulator (client layers, with the run's final emulator LoRA
// and adapter) against the full model's at the same depth, as alignment's normalised L2 (sum (T-S)^2 / sum T^2), and
// KL(full model + adapter || emulator + adapter) of the next-token distributions: over every real token, and over
// the answer tokens only. An adapter trained on the emulator transfers to the full model only as far as its inputs
// there look like its inputs here.
// Run after `npm run build`:
//   node scripts/transfer-gap.mjs RUN_DIR [RUN_DIR ...] [--public N] [--json OUT]
// RUN_DIR: runs/<experiment>/runs/<cell> of a FedBiOT or offsite-tuning run (config.resolved.json, checkpoints/).
// --public N: public windows measured (default 64, the first N in file order).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lastCheckpoint, readRunSpec } from './run-folder.mjs';
const dist = join(import.meta.dirname, '..', 'dist', 'libs');
const { CausalLM, defaultCacheRoot } = await import(join(dist, 'model/src/index.js'));
const { loadFederation } = await import(join(dist, 'fedbiot/src/federation.js'));
const { chunks, toTokenBatch } = await import(join(dist, 'fedbiot/src/batches.js'));
const { planJob } = await import(join(dist, 'fedbiot/src/plan.js'));
const { loraFeeds, shapeOfLora } = await import(join(dist, 'model/src/lora.js'));
const { ops: O } = await import(join(dist, 'engine/src/index.js'));

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const flagValues = new Set(['--public', '--json'].map((f) => args.indexOf(f) + 1).filter((i) => i > 0));
const runs = args.filter((a, i) => !a.startsWith('--') && !flagValues.has(i));
if (runs.length === 0) {
  console.error('usage: node scripts/transfer-gap.mjs RUN_DIR [RUN_DIR ...] [--public N] [--json OUT]');
  process.exit(2);
}
const nPublic = Number(flag('public') ?? 64);

/** The run's last checkpoint's LoRA `name` (its tensors under `name/`), with the plan's spec; undefined if absent. */
function loraFrom(ck, spec) {
  const tensors = new Map();
  for (const [k, t] of ck.tensors) if (k.startsWith(`${spec.name}/`)) tensors.set(k.slice(spec.name.length + 1), t);
  return tensors.size ? { spec: { ...spec, dropout: 0 }, tensors } : undefined;
}

/** The graph-declared shape of every factor of `loras` (loraFeeds' first argument). */
const shapes = (loras) => new Map(loras.flatMap((l) => [...l.tensors].map(([n, t]) => [n, shapeOfLora(n, t, l.spec)])));

const out = [];
for (const run of runs) {
  const spec = readRunSpec(run);
  const lm = await CausalLM.load(spec.model.checkpoint, { threads: 1, provider: 'cpu' });
  try {
    const plan = planJob(spec, lm.config.numLayers);
    const { name: last, checkpoint: ck } = await lastCheckpoint(run);
    const adapter = loraFrom(ck, plan.specs.adapter);
    const emulator = loraFrom(ck, plan.specs.emulator);
    if (!adapter) throw new Error(`${run}: no adapter LoRA in ${last}`);
    const studentLoras = emulator ? [emulator, adapter] : [adapter];
    const { split } = plan;
    const teacherAt = split.teacher.end - 1; // the full model's layer whose output the emulator stands in for
    const studentAt = split.clientLayers.indexOf(split.emulatorLayers.at(-1));
    const B = spec.alignment.batchSize;
    const T = spec.data.maxLength;
    const graph = (kind, layers, loras, at) =>
      lm.graphs.get(`gap-${kind}-${run.replace(/\W/g, '_').slice(-40)}-B${B}-T${T}`, (g) => {
        const m = lm.build(g, {
          batch: B,
          seq: T,
          layers,
          start: 'ids',
          head: true,
          keepHidden: true,
          loras: loras.map((l) => l.spec),
        });
        g.output(m.hiddenStates[at], 'hidden');
        g.output(O.logSoftmax(m.logits, -1), 'logprobs');
      });
    const teacher = await graph('full', lm.allLayers, [adapter], teacherAt);
    const student = await graph('emu', split.clientLayers, studentLoras, studentAt);
    const pad = lm.tokenizer.padTokenId ?? 0; // padding is masked out of every sum

    /** Gap over a list of examples: L2 over real tokens, KL over real tokens and over answer tokens. */
    async function gapOf(examples) {
      let num = 0,
        den = 0,
        klAll = 0,
        nAll = 0,
        klAns = 0,
        nAns = 0;
      for (const group of chunks(examples, B)) {
        const batch = toTokenBatch(group, B, T, pad);
        const ids = lm.tokenFeeds(batch)['input_ids'];
        const t = await teacher.run({ input_ids: ids, ...loraFeeds(shapes([adapter]), [adapter]) });
        const s = await student.run({ input_ids: ids, ...loraFeeds(shapes(studentLoras), studentLoras) });
        const th = t['hidden'].data,
          sh = s['hidden'].data,
          tl = t['logprobs'].data,
          sl = s['logprobs'].data;
        const d = th.length / (B * T);
        const V = tl.length / (B * T);
        group.forEach((ex, b) => {
          const n = Math.min(ex.inputIds.length, T);
          for (let p = 0; p < n; p++) {
            const o = (b * T + p) * d;
            for (let i = 0; i < d; i++) {
              num += (th[o + i] - sh[o + i]) ** 2;
              den += th[o + i] ** 2;
            }
            const v = (b * T + p) * V;
            let kl = 0;
            for (let i = 0; i < V; i++) kl += Math.exp(tl[v + i]) * (tl[v + i] - sl[v + i]);
            klAll += kl;
            nAll++;
            if (batch.lossMask[b * T + p]) {
              klAns += kl;
              nAns++;
            }
          }
        });
      }
      return { l2: num / den, kl: klAll / nAll, klAnswer: nAns ? klAns / nAns : null, tokens: nAll };
    }

    const data = await loadFederation(spec, lm.tokenizer, defaultCacheRoot(), { parts: ['test', 'public'] });
    const row = { run, method: spec.job.method, emulatorLora: emulator ? plan.specs.emulator : null, checkpoint: last };
    row.public = await gapOf(data.publicWindows.slice(0, nPublic));
    row.clients = {};
    for (const c of data.clients) row.clients[c.id] = await gapOf(c.test);
    const pooled = Object.values(row.clients);
    const tok = pooled.reduce((a, g) => a + g.tokens, 0);
    row.test = {
      l2: pooled.reduce((a, g) => a + g.l2 * g.tokens, 0) / tok, // token-weighted mean of the clients' ratios
      kl: pooled.reduce((a, g) => a + g.kl * g.tokens, 0) / tok,
      tokens: tok,
    };
    out.push(row);
    const f = (x) => (x === null ? '-' : x.toFixed(3));
    console.log(
      `${run} (${row.method}${emulator ? `, emulator LoRA r${emulator.spec.r} ${emulator.spec.targets.length} linears` : ''}): ` +
        `public L2 ${f(row.public.l2)} KL ${f(row.public.kl)} | client test L2 ${f(row.test.l2)} KL ${f(row.test.kl)} | ` +
        Object.entries(row.clients)
          .map(([id, g]) => `${id} L2 ${f(g.l2)} KL ${f(g.kl)} KLans ${f(g.klAnswer)}`)
          .join(' | '),
    );
  } finally {
    await lm.release();
  }
}
const json = flag('json');
if (json) writeFileSync(json, JSON.stringify(out, null, 1) + '\n');

// Exact-match accuracy of a knowledge-demo run's final adapter in the full model, split by relation (town, colour,
// trade) instead of by client: with data.knowledgeClients=iid every client's test set mixes all three relations, so
// the job's per-client columns are three random thirds; this says which lookups the averaged adapter learned.
// Re-scores each client's test set exactly as the job does (same prompts, batch, greedy decoding, exact match) and
// checks that the pooled score equals the job's own results.json row for the method before printing anything.
// Run after `npm run build`:
//   node scripts/knowledge-by-relation.mjs RUN_DIR [RUN_DIR ...] [--variant full|emu] [--method M] [--json OUT]
// RUN_DIR: runs/<experiment>/runs/<cell> (config.resolved.json, adapter/, results.json, checkpoints/).
// --variant full (default): the run's adapter/ in the full model (AdapFu, or offsite-tuning's plugged-in adapter);
// --variant emu (FedBiOT only): AdapEmu, the emulator layers with the emulator LoRA and the adapter LoRA of the last
// checkpoint. --method: the results.json row that must match (default fedbiot-adapfu / fedbiot-adapemu for FedBiOT,
// else job.method).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lastCheckpoint, readRunSpec } from './run-folder.mjs';
const dist = join(import.meta.dirname, '..', 'dist', 'libs');
const { CausalLM, readPeftAdapter, fromPeftAdapter, defaultCacheRoot } = await import(join(dist, 'model/src/index.js'));
const { exactMatch } = await import(join(dist, 'data/src/index.js'));
const { loadFederation } = await import(join(dist, 'fedbiot/src/federation.js'));
const { chunks } = await import(join(dist, 'fedbiot/src/batches.js'));
const { planJob } = await import(join(dist, 'fedbiot/src/plan.js'));

const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const flagValues = new Set(['--method', '--json', '--variant'].map((f) => args.indexOf(f) + 1).filter((i) => i > 0));
const runs = args.filter((a, i) => !a.startsWith('--') && !flagValues.has(i));
if (runs.length === 0) {
  console.error('usage: node scripts/knowledge-by-relation.mjs RUN_DIR [RUN_DIR ...] [--method M] [--json OUT]');
  process.exit(2);
}
const RELATIONS = ['town', 'colour', 'trade'];
const out = [];
for (const run of runs) {
  const spec = readRunSpec(run);
  const emu = (flag('variant') ?? 'full') === 'emu';
  const method =
    flag('method') ?? (spec.job.method === 'fedbiot' ? (emu ? 'fedbiot-adapemu' : 'fedbiot-adapfu') : spec.job.method);
  const lm = await CausalLM.load(spec.model.checkpoint, { threads: 1, provider: 'cpu' });
  try {
    const adapterDir = join(run, 'adapter');
    const adapter = fromPeftAdapter(
      await readPeftAdapter(adapterDir),
      lm.config,
      'adapter',
      `${adapterDir}/adapter_model.safetensors`,
      lm.allLayers,
    );
    // AdapFu (roles.ts evalVariant 'full'): every layer of the original model, the adapter's LoRA only.
    let variant = { layers: lm.allLayers, loras: [adapter] };
    if (emu) {
      // AdapEmu (roles.ts evalVariant 'emu'): the client model's layers with the emulator and adapter LoRAs.
      const { checkpoint: ck } = await lastCheckpoint(run);
      const lora = (name) => {
        const tensors = new Map();
        for (const [k, t] of ck.tensors) if (k.startsWith(`${name}/`)) tensors.set(k.slice(name.length + 1), t);
        const layers = [...new Set([...tensors.keys()].map((k) => Number(/layers\.(\d+)\./.exec(k)[1])))].toSorted(
          (x, y) => x - y,
        );
        // The emulator LoRA may differ from the adapter's (alignment.emulatorLora): the plan says each one's shape.
        const { r, alpha, targets } = planJob(spec, lm.config.numLayers).specs[name];
        return { spec: { name, r, alpha, targets, layers, dropout: 0 }, tensors };
      };
      const emulator = lora('emulator');
      const adapterLora = lora('adapter');
      variant = {
        layers: [...emulator.spec.layers, ...adapterLora.spec.layers].toSorted((x, y) => x - y),
        loras: [emulator, adapterLora],
      };
    }
    const data = await loadFederation(spec, lm.tokenizer, defaultCacheRoot(), { parts: ['test'] });
    const B = spec.clients.batchSize;
    const tally = Object.fromEntries(RELATIONS.map((r) => [r, { correct: 0, items: 0 }]));
    const perClient = {};
    let correct = 0;
    let items = 0;
    for (const c of data.clients) {
      const records = readFileSync(join(spec.data.federation, 'clients', c.id, 'test.jsonl'), 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l));
      if (records.length !== c.testItems.length)
        throw new Error(`${c.id}: ${records.length} records, ${c.testItems.length} items`);
      let k = 0;
      let clientCorrect = 0;
      for (const group of chunks(c.testItems, B)) {
        const prompts = group.map((i) => i.prompt);
        while (prompts.length < B) prompts.push(group.at(-1).prompt);
        const outs = await lm.generate(prompts, { maxNewTokens: spec.eval.maxNewTokens }, variant);
        group.forEach((item, i) => {
          const rec = records[k++];
          if (rec.output !== item.answer && rec.output.trim() !== item.answer.trim())
            throw new Error(`${c.id}: record ${k - 1} answer ${rec.output} vs item ${item.answer}`);
          const ok = exactMatch(lm.tokenizer.decode(outs[i], { skipSpecialTokens: true }), item.answer);
          tally[rec.category].items++;
          if (ok) {
            tally[rec.category].correct++;
            clientCorrect++;
          }
        });
      }
      perClient[c.id] = clientCorrect / c.testItems.length;
      correct += clientCorrect;
      items += c.testItems.length;
    }
    const results = JSON.parse(readFileSync(join(run, 'results.json'), 'utf8'));
    const jobAll = results.rows.find((r) => r.method === method && r.client === 'all')?.accuracy;
    const all = correct / items;
    if (jobAll === undefined || Math.abs(jobAll - all) > 1e-9)
      throw new Error(`${run}: re-scored ${method} ${all} but results.json says ${jobAll}: not the same evaluation`);
    const row = {
      run,
      method,
      all,
      ...Object.fromEntries(RELATIONS.map((r) => [r, tally[r].correct / tally[r].items])),
      items: Object.fromEntries(RELATIONS.map((r) => [r, tally[r].items])),
      perClient,
    };
    out.push(row);
    console.log(
      `${run} ${method}: all ${(100 * all).toFixed(1)} (= results.json) | ` +
        RELATIONS.map((r) => `${r} ${(100 * row[r]).toFixed(1)}`).join(' | '),
    );
  } finally {
    await lm.release();
  }
}
const json = flag('json');
if (json) writeFileSync(json, JSON.stringify(out, null, 1) + '\n');

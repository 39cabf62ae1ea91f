// What the knowledge demo's base model knows before any client trains, full model vs emulator (layer dropout):
// - recall: the fact after its pretraining statement prefix ("<name> lives in"), and
// - extraction: the fact as the answer to a client's question in pretraining's drill form ("Q: ... A:"), untuned.
// Scored on the first 120 client people (never asked about in pretraining). Run after `npm run build`:
//   node scripts/knowledge-probe.mjs [model-dir] [--layers 0,2,4,6,9,10,11] [--aligned NAME=CHECKPOINT_DIR ...]
// --aligned adds a column per FedBiOT checkpoint (<run>/checkpoints/round-NNNNNN): the emulator with the emulator
// LoRA the server's alignment trained (r 8, alpha 16 on q,v of the emulator's lower layers; no adapter LoRA), i.e.
// what alignment put back into the emulator.
import { join } from 'node:path';
const dist = join(import.meta.dirname, '..', 'dist', 'libs');
const { generateWorld, CLIENT_PEOPLE } = await import(join(dist, 'data/src/index.js'));
const { CausalLM } = await import(join(dist, 'model/src/causal-lm.js'));
const { loadCheckpoint } = await import(join(dist, 'fedbiot/src/run-dir.js'));
const args = process.argv.slice(2);
const valueOf = new Set();
const li = args.indexOf('--layers');
if (li >= 0) valueOf.add(li + 1);
const emuLayers = li >= 0 ? args[li + 1].split(',').map(Number) : [0, 2, 4, 6, 9, 10, 11];
const aligned = [];
for (const [i, a] of args.entries()) {
  if (a !== '--aligned') continue;
  valueOf.add(i + 1);
  const [name, ckpt] = args[i + 1].split('=');
  const from = await loadCheckpoint(ckpt);
  const tensors = new Map();
  for (const [k, t] of from.tensors) if (k.startsWith('emulator/')) tensors.set(k.slice('emulator/'.length), t);
  const layers = [...new Set([...tensors.keys()].map((k) => Number(/layers\.(\d+)\./.exec(k)[1])))].sort(
    (x, y) => x - y,
  );
  const spec = { name: 'emulator', r: 8, alpha: 16, targets: ['q_proj', 'v_proj'], layers, dropout: 0 };
  aligned.push([name, { layers: emuLayers, loras: [{ spec, tensors }] }]);
}
const dir = args.find((a, i) => !a.startsWith('--') && !valueOf.has(i)) ?? 'models/demo-deep';
const model = await CausalLM.load(dir, { threads: 1 });
const tok = model.tokenizer;
const people = generateWorld().slice(0, Math.min(120, CLIENT_PEOPLE));
const qa = (q) => `Q: ${q} A:`;
const probes = {
  'recall town': [(p) => `${p.name} lives in`, 'town'],
  'recall colour': [(p) => `${p.name} likes the colour`, 'colour'],
  'recall trade': [(p) => `${p.name} works as a`, 'trade'],
  'extract town': [(p) => qa(`Where does ${p.name} live?`), 'town'],
  'extract colour': [(p) => qa(`Which colour does ${p.name} like best?`), 'colour'],
  'extract trade': [(p) => qa(`What is the job of ${p.name}?`), 'trade'],
};
const rows = [];
for (const [probe, [prompt, rel]] of Object.entries(probes)) {
  const row = { probe };
  for (const [variant, how] of [['full', {}], ['emulator', { layers: emuLayers }], ...aligned]) {
    const ids = people.map((p) => tok.encode(prompt(p)));
    const outs = [];
    for (let i = 0; i < ids.length; i += 40)
      outs.push(...(await model.generate(ids.slice(i, i + 40), { maxNewTokens: 3 }, how)));
    const ok = outs.filter((o, i) =>
      tok.decode(o).trim().toLowerCase().startsWith(people[i][rel].toLowerCase()),
    ).length;
    row[variant] = `${ok}/${people.length}`;
  }
  rows.push(row);
}
console.log(`model ${dir}; emulator layers ${emuLayers.join(',')}; guessing is 1 in 8 (15/120)`);
console.table(rows);

// Joins our perf rows with the PyTorch peer's into the comparison table (ours, peer, ratio = peer ms / ours ms,
// so > 1 means we are faster). Our full-prefix step is the same work as the peer's step (every layer forward,
// LoRA on the top 2); our client step runs the emulator (dropped layers) instead, as FedBiOT clients do.
// Usage: node scripts/device/perf-join.mjs OURS.json PEER.json OUT.json
import { readFileSync, writeFileSync } from 'node:fs';
const [oursFile, peerFile, outFile] = process.argv.slice(2);
const ours = JSON.parse(readFileSync(oursFile, 'utf8'));
const peer = JSON.parse(readFileSync(peerFile, 'utf8'));
const rows = [];
for (const p of peer) {
  const model = p.case.replace('-client-top2', '');
  // The CUDA peer is set against each of our GPU providers present (webgpu, cuda, ...), the CPU peer against cpu.
  const mine = (r) => (p.device === 'cuda' ? r.provider !== 'cpu' : r.provider === 'cpu');
  for (const variant of ['full-prefix-step', 'client-step']) {
    for (const o of ours.filter((r) => r.case === `${model}-${variant}` && mine(r))) {
      rows.push({
        case: `${model}-${variant}`,
        ours_provider: o.provider,
        peer_device: p.device === 'cuda' ? `cuda ${p.precision ?? 'fp32'}` : `cpu ${p.threads} threads`,
        ours_ms: o.ms_per_step,
        peer_ms: p.ms_per_step,
        speed_ratio: +(p.ms_per_step / o.ms_per_step).toFixed(3),
        ours_peak_rss_mib: o.peak_rss_mib,
        ours_peak_gpu_mib: o.peak_gpu_mib ?? null,
        peer_peak_gpu_mib: p.peak_gpu_mib,
        machine: o.machine,
        date: o.date,
      });
    }
  }
}
for (const o of ours.filter((r) => r.task === 'align'))
  rows.push({
    case: o.case,
    ours_provider: o.provider,
    ours_ms: o.ms_per_step,
    ours_peak_rss_mib: o.peak_rss_mib,
    machine: o.machine,
    date: o.date,
  });
writeFileSync(outFile, JSON.stringify(rows, null, 1) + '\n');
console.log('| case | ours | peer | ours ms | peer ms | peer/ours |');
console.log('|---|---|---|---|---|---|');
for (const r of rows)
  console.log(
    `| ${r.case} | ${r.ours_provider} | ${r.peer_device ?? ''} | ${r.ours_ms} | ${r.peer_ms ?? ''} | ${r.speed_ratio ?? ''} |`,
  );

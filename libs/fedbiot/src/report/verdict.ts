import { binomialSe } from './stats.js';
import { ALL_CLIENTS, type ResultRow } from './results-json.js';

/**
 * The verdict of one run, printed under the terminal tables and shown in report.html: does FedBiOT's AdapFu beat
 * offsite-tuning on the pooled test set, by more than the sampling noise of ONE run's test items? The interval is
 * the two-proportion normal approximation over test items only; it ignores training randomness (seeds), which
 * `npm run experiment` measures. Returns lines of text.
 */
const pct = (x: number): string => `${(100 * x).toFixed(1)} %`;

export function singleRunVerdict(
  rows: readonly ResultRow[],
  testItems: number,
  baseInfo?: { lossNoEos?: number; vocabSize?: number },
): string[] {
  const acc = (m: string): number | null =>
    rows.find((r) => r.method === m && r.client === ALL_CLIENTS)?.accuracy ?? null;
  const fu = acc('fedbiot-adapfu');
  const emu = acc('fedbiot-adapemu');
  const ot = acc('offsite-tuning');
  const base = acc('base');
  const lines: string[] = [];
  const se = (p: number): number => binomialSe(p, testItems);
  lines.push(
    `Sample size: ${testItems} test questions pooled over all clients; one run's accuracy has a standard error of about ${(100 * se(0.5)).toFixed(1)} points at 50 % (binomial).`,
  );
  if (fu === null || ot === null) {
    lines.push('Verdict: needs both FedBiOT AdapFu and offsite-tuning rows (baselines.offsiteTuning) to compare.');
    return lines;
  }
  const d = fu - ot;
  const half = 1.96 * Math.sqrt(se(fu) ** 2 + se(ot) ** 2);
  const verdict =
    d - half > 0
      ? 'FedBiOT AdapFu beats offsite-tuning beyond this run\u2019s test-set noise'
      : d + half < 0
        ? 'offsite-tuning beats FedBiOT AdapFu beyond this run\u2019s test-set noise'
        : 'no difference beyond this run\u2019s test-set noise';
  lines.push(
    `Verdict: ${verdict}: AdapFu ${pct(fu)} vs offsite-tuning ${pct(ot)}, difference ${(100 * d).toFixed(1)} points (95 % CI ${(100 * (d - half)).toFixed(1)} to ${(100 * (d + half)).toFixed(1)}, test items only).`,
  );
  if (emu !== null)
    lines.push(
      `AdapFu - AdapEmu: ${(100 * (fu - emu)).toFixed(1)} points (${fu > emu ? 'plugging the adapter back into the full model helped' : 'plugging the adapter back into the full model did not help here'})${base !== null ? `; base model ${pct(base)}` : ''}.`,
    );
  const baseLoss = rows.find((r) => r.method === 'base' && r.client === ALL_CLIENTS)?.test_loss;
  if (typeof baseLoss === 'number' && baseInfo?.lossNoEos !== undefined)
    lines.push(
      `Base model response loss: ${baseLoss.toFixed(2)} nats/token, ${baseInfo.lossNoEos.toFixed(2)} without the end-of-sequence token${baseInfo.vocabSize ? ` (uniform guessing: ln ${baseInfo.vocabSize} = ${Math.log(baseInfo.vocabSize).toFixed(2)})` : ''}. Above uniform guessing means confidently wrong: the base model never saw the question format, so it predicts prose, not the answer.`,
    );
  lines.push(
    'One seed says little about training randomness: `npm run experiment` gives means and t-intervals over seeds.',
  );
  return lines;
}

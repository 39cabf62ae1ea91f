/**
 * Private aggregation for the round coordinator (its `aggregate` hook): client-level DP-FedAvg (McMahan et al.
 * 2018) and secure aggregation (Bonawitz et al. 2017 / SecAgg+), for FedBiOT and for the federated baselines alike,
 * since all of them average adapter-LoRA updates through the same coordinator.
 *
 * Per round, on each client's side (simulated here in-process; the services call the same libs/privacy steps):
 *   delta = local adapter - the round's global adapter (all tensors flattened in sorted-name order);
 *   dp: delta clipped to L2 norm C; weight w = min(tokens (or examples, or 1), W), W a public per-round bound;
 *   secure aggregation: (w / W) * delta (+ this client's share of the noise, N(0, sigma^2 C^2 / m)) is fixed-point
 *   encoded in Z_2^64 and masked; the server object sees masked vectors only and learns sum w * delta, sum w.
 * On the server's side:
 *   dp without secure aggregation: N(0, sigma^2 C^2) added to sum (w / W) * delta;
 *   new adapter = global + (noisy) sum (w / W) delta / (sum w / W)     (FedAvg of the clients' adapters when no dp);
 *   the RDP accountant steps once per round with q = m / N and the noise multiplier that made it into the sum.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { LoraWeights } from '../../model/src/light.js';
import {
  CLIENT_STATS_LENGTH,
  RdpAccountant,
  SecAggError,
  clientStatsFields,
  cryptoRng,
  effectiveNoiseMultiplier,
  gaussianNoise,
  noiseStd,
  prepareClientInput,
  seededRng,
  secureAggregateInProcess,
  tensorLayout,
  unflatten,
  type GraphConfig,
  type Rng,
  type SecAggConfig,
  type SecAggInput,
} from '../../privacy/src/index.js';
import type { ClientUpdate, Weighting } from './aggregate.js';
import { JobSpecError } from './errors.js';
import type { JobSpec } from './job-spec.js';
import { clientsPerRound } from './sampling.js';
import type { PrivacySpec } from './privacy-spec.js';

/** What the coordinator's aggregate hook returns: the new adapter and metrics events for the round. */
export interface HookResult {
  readonly adapter: LoraWeights;
  readonly events: readonly { kind: string; [k: string]: unknown }[];
}

export interface PrivacyAggregationOptions {
  readonly privacy: PrivacySpec;
  /** All clients of the federation (N), for the sampling rate q = clients sampled per round / N. */
  readonly clientCount: number;
  /**
   * Clients sampled per round (clients.perRound); default: the round's accepted updates. The sampling rate counts
   * a sampled client whose update was then rejected or lost: it was still sampled.
   */
  readonly sampledPerRound?: number;
  readonly weighting: Weighting;
  /**
   * W: the largest weight one client may carry in a round (public). DP-FedAvg caps w at W so that the weighted
   * update (w / W) * delta has norm <= C; secure aggregation needs integer weights in [0, W]. Use maxWeightFor.
   */
  readonly maxWeight: number;
  /** Picks the simulated dropouts of each round (reproducible per seed; never the noise or the keys). */
  readonly seed: number;
  /** Names the run in round ids (with a random suffix: a round id is never reused, not even on resume). */
  readonly label: string;
  /** A previous state() (resume). */
  readonly resume?: unknown;
  /** Terminal lines (one per round). */
  readonly log?: (line: string) => void;
  /** Noise source; default node:crypto randomness (a seeded Rng is for tests only: it voids the guarantee). */
  readonly rng?: Rng;
  /** Replaces node:crypto randomBytes inside each SecAgg client (tests only). */
  readonly secAggRandom?: (clientId: string) => (n: number) => Buffer;
}

/** W for a job: localSteps * gradAccum * batchSize rows, each at most maxLength loss-bearing tokens. */
export function maxWeightFor(
  weighting: Weighting,
  c: { localSteps: number; gradAccum: number; batchSize: number },
  maxLength: number,
): number {
  const rows = c.localSteps * c.gradAccum * c.batchSize;
  return weighting === 'uniform' ? 1 : weighting === 'examples' ? rows : rows * maxLength;
}

/** Default SecAgg+ degree: the smallest even k >= 2 log2(m), at most m - 1 (rounded down to even). */
export function defaultDegree(m: number): number {
  const want = 2 * Math.ceil(Math.log2(Math.max(m, 2)));
  const most = (m - 1) % 2 === 0 ? m - 1 : m - 2;
  return Math.max(2, Math.min(want + (want % 2), most));
}

const fail = (path: string, message: string): never => {
  throw new JobSpecError([{ file: 'job spec', path, message }]);
};

export class PrivacyAggregation {
  readonly accountant: RdpAccountant;
  private readonly rng: Rng;

  constructor(readonly opts: PrivacyAggregationOptions) {
    if (opts.privacy.dp === undefined && opts.privacy.secureAggregation === undefined)
      throw new RangeError('PrivacyAggregation: neither privacy.dp nor privacy.secureAggregation is set');
    if (!Number.isInteger(opts.maxWeight) || opts.maxWeight < 1)
      throw new RangeError(`maxWeight must be an integer >= 1, got ${opts.maxWeight}`);
    this.accountant =
      opts.resume === undefined ? new RdpAccountant() : RdpAccountant.fromState((opts.resume as { rdp: unknown }).rdp);
    this.rng = opts.rng ?? cryptoRng();
  }

  /**
   * Steps the accountant for one round whose sum carries noise of multiplier `sigmaEff` (below the configured sigma
   * when only some clients' noise shares are in it), with `sampled` clients of the round, and returns the `privacy`
   * event's accounting fields. The standalone hook and the services' secure path both account through here.
   */
  accountRound(sigmaEff: number, sampled: number): Record<string, unknown> {
    const dp = this.opts.privacy.dp!;
    const q = Math.min(1, (this.opts.sampledPerRound ?? sampled) / this.opts.clientCount);
    this.accountant.step(q, sigmaEff);
    const eps = this.accountant.getPrivacySpent(dp.delta);
    return {
      noise_multiplier: dp.noiseMultiplier,
      effective_noise_multiplier: sigmaEff,
      sample_rate: q,
      // JSON has no Infinity: null means unbounded (sigma 0).
      epsilon: Number.isFinite(eps.epsilon) ? eps.epsilon : null,
      delta: dp.delta,
      rdp_order: Number.isFinite(eps.epsilon) ? eps.order : null,
      dp_rounds: this.accountant.steps,
    };
  }

  /** To persist with each checkpoint (the accountant's per-order totals). */
  state(): { rdp: ReturnType<RdpAccountant['exportState']> } {
    return { rdp: this.accountant.exportState() };
  }

  /** The coordinator's aggregate hook: the new global adapter from the round's accepted client updates. */
  aggregate = (round: number, global: LoraWeights, updates: readonly ClientUpdate[]): HookResult => {
    const { privacy, maxWeight: W } = this.opts;
    const dp = privacy.dp;
    const sa = privacy.secureAggregation;
    const m = updates.length;
    if (sa && m < 2) {
      // A "sum" of one client is that client's update: release nothing, keep the adapter (no privacy spent).
      const event = {
        kind: 'privacy',
        clients: m,
        skipped: 'secure aggregation needs at least 2 clients; adapter kept',
      };
      this.opts.log?.(`  round ${round + 1} privacy: ${event.skipped}`);
      return { adapter: global, events: [event] };
    }
    const layout = tensorLayout(new Map([...global.tensors].map(([k, v]) => [k, v.length])));
    const sigma = dp?.noiseMultiplier ?? 0;
    const C = dp?.clip ?? 0;
    // Distributed noise under secure aggregation: each of the m clients adds N(0, sigma^2 C^2 / m).
    const perClientStd =
      sa && dp && sigma > 0 ? noiseStd({ clipNorm: C, noiseMultiplier: sigma, mode: 'distributed', nExpected: m }) : 0;
    // --- each client's side (prepareClientInput is what a client-trainer calls too) ---
    let clippedClients = 0;
    let normSum = 0;
    let capped = 0;
    const contributions = updates.map((u) => {
      const raw = this.opts.weighting === 'uniform' ? 1 : this.opts.weighting === 'tokens' ? u.tokens : u.examples;
      const ci = prepareClientInput({
        local: u.tensors,
        global: global.tensors,
        weight: raw,
        maxWeight: W,
        ...(dp ? { dp: { clip: C, noiseStd: perClientStd } } : {}),
        rng: this.rng,
      });
      if (ci.clipped) clippedClients++;
      if (ci.capped) capped++;
      normSum += ci.norm;
      return { id: u.clientId, input: ci.input };
    });
    let sum: Float64Array; // sum_u (w_u / W) x_u (+ noise)
    let weightSum: number; // sum_u w_u
    let inSum = m;
    let meanNorm = m > 0 ? normSum / m : 0; // secure aggregation: from the survivors' sum instead
    const event: { kind: string; [k: string]: unknown } = { kind: 'privacy', clients: m, capped_weights: capped };
    let noiseIn = 0; // how many clients' noise shares ended up in the sum (distributed noise)
    if (sa) {
      const ids = contributions.map((c) => c.id).toSorted();
      const graph: GraphConfig =
        sa.graph === 'secagg+'
          ? { kind: 'harary', k: sa.degree ?? defaultDegree(m), seed: this.opts.label }
          : { kind: 'complete' };
      if (graph.kind === 'harary' && graph.k >= m)
        fail('privacy.secureAggregation.degree', `${graph.k} must be below the ${m} clients of round ${round}`);
      const holders = graph.kind === 'complete' ? m : graph.k + 1;
      const t = sa.threshold ?? Math.floor(holders / 2) + 1;
      if (t > holders)
        fail(
          'privacy.secureAggregation.threshold',
          `${t} exceeds the ${holders} share holders per client in round ${round} (${m} clients${graph.kind === 'harary' ? `, degree ${graph.k}` : ''})`,
        );
      const R = sa.clipRange ?? (dp ? C + 10 * perClientStd : 1);
      const cfg: SecAggConfig = {
        roundId: `${this.opts.label}/${round}/${randomBytes(8).toString('hex')}`,
        clients: ids,
        threshold: t,
        vectorLength: layout.total,
        clipRange: R,
        maxWeight: W,
        graph,
        statsLength: CLIENT_STATS_LENGTH,
      };
      // Simulated dropouts: a public, seeded choice per round (the same on resume); a client drops at most once.
      const order = ids.toSorted((a, b) => {
        const h = (id: string) =>
          createHash('sha256').update(`dropouts:${this.opts.seed}:${round}:${id}`).digest('hex');
        return h(a) < h(b) ? -1 : 1;
      });
      const nb = sa.simulateDropouts.beforeMasking;
      const na = sa.simulateDropouts.afterMasking;
      if (nb + na > m)
        fail(
          'privacy.secureAggregation.simulateDropouts',
          `${nb} + ${na} dropouts but round ${round} has ${m} clients`,
        );
      const dropBeforeMasking = order.slice(0, nb);
      const dropAfterMasking = order.slice(nb, nb + na);
      const inputs = new Map<string, SecAggInput>(contributions.map((c) => [c.id, c.input]));
      const t0 = performance.now();
      let r;
      try {
        r = secureAggregateInProcess(cfg, inputs, {
          dropBeforeMasking,
          dropAfterMasking,
          ...(this.opts.secAggRandom ? { random: this.opts.secAggRandom } : {}),
        });
      } catch (e) {
        if (e instanceof SecAggError)
          throw new SecAggError(
            `round ${round}: secure aggregation failed (${m} clients, threshold ${t}, dropped before masking: ${dropBeforeMasking.join(', ') || 'none'}, after masking: ${dropAfterMasking.join(', ') || 'none'}): ${e.message}`,
          );
        throw e;
      }
      // r.sum = sum_u w_u x_u = W * sum_u (w_u / W) x_u: back to the (w / W) scale of the DP analysis.
      sum = Float64Array.from(r.sum, (v) => v / W);
      weightSum = r.weightSum;
      inSum = r.survivors.length;
      noiseIn = dp && sigma > 0 ? inSum : 0;
      // The server learns the survivors' clipped count and norm sum from the secure sum, not per client.
      ({ clipped_clients: clippedClients, mean_update_norm: meanNorm } = clientStatsFields(r.stats, inSum));
      Object.assign(event, {
        secagg_survivors: inSum,
        secagg_dropped_before_masking: r.dropped.length,
        // Who is not in the sum: the server knows this anyway (it saw no masked input from them).
        secagg_excluded: r.dropped,
        secagg_dropped_after_masking: dropAfterMasking.length,
        secagg_threshold: t,
        secagg_graph: graph.kind === 'complete' ? 'complete' : `secagg+ k=${graph.k}`,
        secagg_bytes_up: r.bytesUp,
        secagg_bytes_down: r.bytesDown,
        secagg_clip_range: R,
        secagg_clamped: r.clamped,
        secagg_error_bound: r.errorBound / W, // per element of the (w / W)-scaled sum
        secagg_ms: Math.round(performance.now() - t0),
      });
      if (r.rejected.length > 0) event['secagg_rejected'] = r.rejected.map((x) => `${x.clientId ?? '?'}: ${x.reason}`);
    } else {
      // Server-side sum in float64 (the server sees each clipped update: DP protects the output, not the inputs).
      sum = new Float64Array(layout.total);
      weightSum = 0;
      for (const c of contributions) {
        const f = c.input.weight / W;
        for (let i = 0; i < sum.length; i++) sum[i]! += f * c.input.values[i]!;
        weightSum += c.input.weight;
      }
      if (dp && sigma > 0) {
        const noise = gaussianNoise(
          layout.total,
          noiseStd({ clipNorm: C, noiseMultiplier: sigma, mode: 'server' }),
          this.rng,
        );
        for (let i = 0; i < sum.length; i++) sum[i]! += noise[i]!;
      }
    }
    let adapter = global;
    if (weightSum > 0) {
      const denom = weightSum / W;
      const mean = unflatten(
        layout,
        Float64Array.from(sum, (v) => v / denom),
      );
      adapter = {
        spec: global.spec,
        tensors: new Map([...global.tensors].map(([k, g]) => [k, g.map((v, i) => v + mean.get(k)![i]!)])),
      };
    } else event['skipped'] = 'weight sum 0: adapter kept';
    event['mean_update_norm'] = meanNorm;
    // sum w / (s W) over the s clients in the sum: how much of the weight bound W the clients use (the server knows
    // sum w anyway). Under DP the signal scales with it and the noise does not.
    event['weight_fill'] = inSum > 0 ? weightSum / (inSum * W) : 0;
    if (dp) {
      // Distributed noise: only the survivors' shares are in the sum, so the achieved multiplier is lower.
      const sigmaEff = sa ? effectiveNoiseMultiplier(sigma, noiseIn, m) : sigma;
      Object.assign(event, { clip: C, clipped_clients: clippedClients, ...this.accountRound(sigmaEff, m) });
    }
    this.opts.log?.(`  round ${round + 1} privacy: ${describe(event)}`);
    return { adapter, events: [event] };
  };
}

function describe(e: Record<string, unknown>): string {
  const parts: string[] = [];
  if ('noise_multiplier' in e) {
    const eps = e['epsilon'] as number | null;
    parts.push(
      `(epsilon ${eps === null ? 'inf' : eps.toFixed(3)}, delta ${String(e['delta'])}) after ${String(e['dp_rounds'])} rounds`,
      `sigma ${(e['effective_noise_multiplier'] as number).toFixed(3)}, clipped ${String(e['clipped_clients'])}/${String(e['clients'])} at C=${String(e['clip'])}`,
    );
  }
  if ('secagg_survivors' in e)
    parts.push(
      `secagg ${String(e['secagg_survivors'])}/${String(e['clients'])} in the sum (t=${String(e['secagg_threshold'])}, ${String(e['secagg_graph'])}, ${String(e['secagg_dropped_after_masking'])} recovered after masking), ${(((e['secagg_bytes_up'] as number) + (e['secagg_bytes_down'] as number)) / 1024).toFixed(0)} KiB, ${String(e['secagg_ms'])} ms`,
    );
  return parts.join('; ');
}

/** The last (epsilon, delta) per phase from metrics events, as lines for the terminal and results.txt ('' if none). */
export function privacySummary(events: readonly Record<string, unknown>[]): string {
  const last = new Map<string, Record<string, unknown>>();
  for (const e of events) if (e['kind'] === 'privacy') last.set(String(e['phase'] ?? 'main'), e);
  const lines: string[] = [];
  for (const [phase, e] of last) {
    if (!('noise_multiplier' in e)) {
      lines.push(`privacy ${phase}: secure aggregation only (no DP: epsilon unbounded)`);
      continue;
    }
    const eps = e['epsilon'] as number | null;
    lines.push(
      `privacy ${phase}: client-level (epsilon ${eps === null ? 'inf' : eps.toFixed(3)}, delta ${String(e['delta'])}) after ${String(e['dp_rounds'])} rounds (C ${String(e['clip'])}, sigma ${String(e['noise_multiplier'])}, q ${(e['sample_rate'] as number).toFixed(3)})`,
    );
  }
  return lines.length === 0 ? '' : `\n${lines.join('\n')}`;
}

/**
 * Tests only: when set, DP noise comes from seededRng(`<value>/<phase>`) instead of node:crypto, so a standalone and
 * a distributed run of one spec draw the same noise (and can be compared number for number). It voids the privacy
 * guarantee (the noise is predictable) and repeats its draws after a resume; a warning line says so.
 */
export const INSECURE_DP_NOISE_SEED_ENV = 'FEDBIOT_INSECURE_DP_NOISE_SEED';

/** The job's privacy hook for one federated phase, or undefined when the spec's `privacy` section is empty. */
export function privacyFor(
  spec: JobSpec,
  phase: string,
  clientCount: number,
  resume: unknown,
  log: (line: string) => void,
): PrivacyAggregation | undefined {
  const privacy = spec.privacy;
  if (privacy?.dp === undefined && privacy?.secureAggregation === undefined) return undefined;
  const noiseSeed = process.env[INSECURE_DP_NOISE_SEED_ENV];
  if (noiseSeed !== undefined && noiseSeed !== '')
    log(
      `  privacy ${phase}: ${INSECURE_DP_NOISE_SEED_ENV} is set: DP noise is seeded (tests only, no privacy guarantee)`,
    );
  return new PrivacyAggregation({
    privacy,
    clientCount,
    sampledPerRound: clientsPerRound(clientCount, spec.clients.perRound),
    weighting: spec.aggregation.weighting,
    maxWeight: privacy.maxWeight ?? maxWeightFor(spec.aggregation.weighting, spec.clients, spec.data.maxLength),
    seed: spec.job.seed,
    label: `${spec.job.id ?? 'job'}/${phase}`,
    ...(resume !== undefined ? { resume } : {}),
    ...(noiseSeed !== undefined && noiseSeed !== '' ? { rng: seededRng(`${noiseSeed}/${phase}`) } : {}),
    log,
  });
}

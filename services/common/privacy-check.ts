/**
 * What the services honour of a job spec's `privacy` section: `privacy.dp` alone (server-side DP-FedAvg, run by the
 * aggregator: services/aggregator/privacy.ts), `privacy.secureAggregation` (the trainers mask their updates, the
 * aggregator learns only the sum: ports-nats.ts trainClientsSecure, client-trainer/trainer.ts), and both (each
 * trainer clips and adds its share of the noise before masking). The standalone job's simulated dropouts are
 * refused when a service starts instead of being ignored.
 */
import { randomBytes } from 'node:crypto';
import { defaultDegree, maxWeightFor, type JobSpec } from '../../libs/fedbiot/src/index.js';
import { PROTOCOL_VERSION, type SecAggPlan } from '../../libs/protocol/src/index.js';
import { CLIENT_STATS_LENGTH, maskedLength, noiseStd } from '../../libs/privacy/src/index.js';

/** Throws when the spec asks the services for a privacy mode they do not implement. */
export function assertServicesPrivacy(spec: JobSpec): void {
  const sa = spec.privacy?.secureAggregation;
  if (sa === undefined) return;
  if (sa.simulateDropouts.beforeMasking > 0 || sa.simulateDropouts.afterMasking > 0)
    throw new Error(
      'privacy.secureAggregation.simulateDropouts is for the standalone job (fedbiot run); in the services clients ' +
        'drop for real: remove it',
    );
}

/** W: the public cap on a client's weight per round (privacy.maxWeight or the most a round yields). */
export function secAggMaxWeight(spec: JobSpec): number {
  return spec.privacy?.maxWeight ?? maxWeightFor(spec.aggregation.weighting, spec.clients, spec.data.maxLength);
}

/** Bytes of one client's masked input (the blob in its update bucket) for an adapter of `vectorLength` elements. */
export function secAggMaskedBytes(vectorLength: number): number {
  return 8 * maskedLength({ vectorLength, statsLength: CLIENT_STATS_LENGTH });
}

/**
 * The SecAgg plan of one round, with the standalone hook's parameters (privacy-aggregation.ts): the round's clients
 * sorted, threshold floor(holders / 2) + 1 unless set, the complete graph or secagg+ of the given (or default)
 * degree seeded by the job's label, clip range R (default 1 without DP, C + 10 sigma C / sqrt(m) with it), W, and
 * with DP the clip C and each client's noise std sigma C / sqrt(m). The round id has a random suffix:
 * keys and masks are never reused, not even when a resumed aggregator re-runs the round.
 */
export function secAggPlanFor(
  spec: JobSpec,
  jobId: string,
  round: number,
  clients: readonly string[],
  vectorLength: number,
): SecAggPlan {
  const sa = spec.privacy?.secureAggregation;
  if (sa === undefined) throw new Error('secAggPlanFor: the spec has no privacy.secureAggregation');
  const ids = clients.toSorted();
  const m = ids.length;
  const graph: SecAggPlan['graph'] =
    sa.graph === 'secagg+'
      ? { kind: 'harary', k: sa.degree ?? defaultDegree(m), seed: `${spec.job.id ?? 'job'}/main` }
      : { kind: 'complete' };
  if (graph.kind === 'harary' && graph.k >= m)
    throw new Error(`privacy.secureAggregation.degree ${graph.k} must be below the ${m} clients of round ${round}`);
  const holders = graph.kind === 'complete' ? m : graph.k + 1;
  const threshold = sa.threshold ?? Math.floor(holders / 2) + 1;
  if (threshold > holders)
    throw new Error(
      `privacy.secureAggregation.threshold ${threshold} exceeds the ${holders} share holders per client in round ${round}`,
    );
  // DP: each client clips to C and adds N(0, sigma^2 C^2 / m) before masking (the standalone hook's distributed noise).
  const dp = spec.privacy?.dp;
  const perClientStd =
    dp && dp.noiseMultiplier > 0
      ? noiseStd({ clipNorm: dp.clip, noiseMultiplier: dp.noiseMultiplier, mode: 'distributed', nExpected: m })
      : 0;
  return {
    protocolVersion: PROTOCOL_VERSION,
    jobId,
    round,
    roundId: `${jobId}/main/${round}/${randomBytes(8).toString('hex')}`,
    clients: ids,
    threshold,
    vectorLength,
    clipRange: sa.clipRange ?? (dp ? dp.clip + 10 * perClientStd : 1),
    maxWeight: secAggMaxWeight(spec),
    graph,
    // Each client's clipped flag and pre-clip norm ride in the masked vector: the aggregator learns their sums only.
    statsLength: CLIENT_STATS_LENGTH,
    ...(dp ? { dp: { clip: dp.clip, noiseStd: perClientStd } } : {}),
  };
}

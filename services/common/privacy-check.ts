/**
 * What the services honour of a job spec's `privacy` section: `privacy.dp` (server-side DP-FedAvg, run by the
 * aggregator: services/aggregator/privacy.ts) and `privacy.secureAggregation` without DP (the trainers mask their
 * updates, the aggregator learns only the sum: ports-nats.ts trainClientsSecure, client-trainer/trainer.ts). Both
 * together (distributed noise) and the standalone job's simulated dropouts are refused when a service starts
 * instead of being run differently from what the spec asks.
 */
import { randomBytes } from 'node:crypto';
import { defaultDegree, maxWeightFor, type JobSpec } from '../../libs/fedbiot/src/index.js';
import { PROTOCOL_VERSION, type SecAggPlan } from '../../libs/protocol/src/index.js';

/** Throws when the spec asks the services for a privacy mode they do not implement. */
export function assertServicesPrivacy(spec: JobSpec): void {
  const sa = spec.privacy?.secureAggregation;
  if (sa === undefined) return;
  if (spec.privacy?.dp !== undefined)
    throw new Error(
      'together with privacy.dp (noise split across the clients), privacy.secureAggregation is not supported by the ' +
        'services yet; run it standalone (fedbiot run), or drop one of the two (each alone is supported)',
    );
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

/**
 * The SecAgg plan of one round, with the standalone hook's parameters (privacy-aggregation.ts): the round's clients
 * sorted, threshold floor(holders / 2) + 1 unless set, the complete graph or secagg+ of the given (or default)
 * degree seeded by the job's label, clip range R (default 1 without DP) and W. The round id has a random suffix:
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
  return {
    protocolVersion: PROTOCOL_VERSION,
    jobId,
    round,
    roundId: `${jobId}/main/${round}/${randomBytes(8).toString('hex')}`,
    clients: ids,
    threshold,
    vectorLength,
    clipRange: sa.clipRange ?? 1,
    maxWeight: secAggMaxWeight(spec),
    graph,
  };
}

/**
 * What the services honour of a job spec's `privacy` section: `privacy.dp` (server-side DP-FedAvg, run by the
 * aggregator: services/aggregator/privacy.ts). Secure aggregation is not wired into the services yet, so a spec
 * that asks for it is refused when a service starts instead of being run with every update in the clear.
 */
import type { JobSpec } from '../../libs/fedbiot/src/light.js';

/** Throws when the spec asks the services for a privacy mode they do not implement (secure aggregation). */
export function assertServicesPrivacy(spec: JobSpec): void {
  if (spec.privacy?.secureAggregation !== undefined)
    throw new Error(
      'privacy.secureAggregation is not supported by the services yet; run it standalone (fedbiot run), or drop it ' +
        'and keep privacy.dp (server-side DP-FedAvg is supported)',
    );
}

/**
 * Client-level DP in the distributed job (libs/privacy, issue 14): the aggregator runs the standalone job's
 * aggregate hook (libs/fedbiot/src/privacy-aggregation.ts) on the round's accepted updates, so each client's update
 * delta is clipped to L2 norm C, weighted by w / W, summed and given Gaussian noise of std sigma C by the server,
 * exactly as `fedbiot run` does (central DP: the aggregator sees the clipped updates, the released adapters are
 * protected). The RDP accountant's state is kept in the job's KV per completed round, so a restarted aggregator
 * continues the accounting where the checkpoint it resumes from left it.
 *
 * With secure aggregation the clients clip and noise before masking (distributed noise) and the round runs through
 * the coordinator's secure path (ports-nats.ts trainClientsSecure): the aggregator then only steps the accountant
 * (secureDpAccount), with the noise multiplier that reached the sum (the survivors' shares).
 */
import { z } from 'zod';
import { privacyFor, type JobSpec, type PrivacyAggregation } from '../../libs/fedbiot/src/index.js';
import { effectiveNoiseMultiplier } from '../../libs/privacy/src/index.js';
import type { StateStore } from '../../libs/protocol/src/index.js';
import { assertServicesPrivacy } from '../common/privacy-check.js';

export { assertServicesPrivacy };

/** KV key of the accountant's state after `round` completed rounds (the checkpoint's round). */
export const privacyStateKey = (round: number): string => `privacy.accountant.${round}`;

/** What the aggregator stores per checkpoint: PrivacyAggregation.state() (the accountant's per-order RDP totals). */
export const PrivacyStateSchema = z.strictObject({
  round: z.int().min(0),
  state: z.strictObject({ rdp: z.unknown() }),
});

/**
 * The round loop's aggregate hook for a job with `privacy.dp` (undefined without privacy), resumed from the
 * accountant state stored with checkpoint `round` (a fresh accountant at round 0 or when none is stored there).
 */
export async function openPrivacy(
  spec: JobSpec,
  clientCount: number,
  state: StateStore,
  round: number,
  log: (line: string) => void,
): Promise<PrivacyAggregation | undefined> {
  assertServicesPrivacy(spec);
  if (spec.privacy?.dp === undefined) return undefined;
  const stored = round > 0 ? await state.get(privacyStateKey(round), PrivacyStateSchema) : null;
  if (round > 0 && stored === null)
    throw new Error(
      `job ${spec.job.id}: resuming at round ${round} with privacy.dp, but KV holds no accountant state ` +
        `(${privacyStateKey(round)}); epsilon would be under-reported`,
    );
  // Phase 'main': the standalone job's label for the job's own method (its noise seed and round ids use it).
  return privacyFor(spec, 'main', clientCount, stored?.value.state, log);
}

/** Stores the accountant's state with checkpoint `round` (before the job state names that round completed). */
export async function savePrivacy(state: StateStore, privacy: PrivacyAggregation, round: number): Promise<void> {
  await state.put(privacyStateKey(round), PrivacyStateSchema, { round, state: privacy.state() });
}

/**
 * DP under secure aggregation: the coordinator's `secureAggregation.account`. Steps the accountant once per round
 * as the standalone hook does (q = clients sampled per round / N; the effective multiplier of the survivors' noise
 * shares, sigma sqrt(s / m)) and returns the `privacy` event's DP fields (clipped_clients and mean_update_norm come
 * from the clients' stats in the secure sum: coordinator.ts secureRound).
 */
export function secureDpAccount(
  spec: JobSpec,
  privacy: PrivacyAggregation,
): (round: number, sampled: number, survivors: number) => Record<string, unknown> {
  const dp = spec.privacy!.dp!;
  return (_round, sampled, survivors) => {
    const sigma = dp.noiseMultiplier;
    const sigmaEff = effectiveNoiseMultiplier(sigma, sigma > 0 ? survivors : 0, sampled);
    return { clip: dp.clip, ...privacy.accountRound(sigmaEff, sampled) };
  };
}

/**
 * The `privacy` section of the job spec (zod), kept out of job-spec.ts so that file only names it:
 *
 *   privacy:
 *     dp:                      # client-level DP-FedAvg (McMahan et al. 2018)
 *       clip: 0.05             # C: each client's update delta (local - global adapter LoRA) clipped to L2 norm C
 *       noiseMultiplier: 1.0   # sigma: Gaussian noise of std sigma * C on the sum of the weighted, clipped deltas
 *       delta: 1e-5            # the delta of the (epsilon, delta) reported after each round
 *     secureAggregation:       # Bonawitz et al. 2017; graph secagg+ = Bell et al. 2020
 *       threshold: 3           # Shamir threshold t; absent: floor(holders / 2) + 1
 *       graph: complete        # or secagg+ (k-regular Harary graph, degree `degree`)
 *       degree: 4              # secagg+ only; absent: the smallest even k >= 2 log2(n), below n
 *       clipRange: 1           # fixed-point range R per element; absent: C + 10 sigma C / sqrt(n) with dp, else 1
 *       simulateDropouts:      # standalone job only: clients that vanish mid-protocol each round
 *         beforeMasking: 0     #   after sharing keys, before the masked input (excluded from the sum)
 *         afterMasking: 0      #   after the masked input, before unmasking (still in the sum, recovered by Shamir)
 *     maxWeight: 100           # W, the public cap on a client's weight per round; absent: the most a round yields
 */
import { z } from 'zod';

const posNum = () => z.number().positive();

export const SECAGG_GRAPHS = ['complete', 'secagg+'] as const;

const dpSection = z.strictObject({
  /** C: L2 bound of one client's (weighted) update delta. Required: there is no data-independent default. */
  clip: posNum(),
  /** sigma: noise std on the sum is sigma * C. */
  noiseMultiplier: z.number().min(0),
  /** delta of the reported (epsilon, delta); should be well below 1 / number of clients. */
  delta: z.number().gt(0).lt(1).default(1e-5),
});

const secureAggregationSection = z
  .strictObject({
    threshold: z.number().int().min(2).optional(),
    graph: z.enum(SECAGG_GRAPHS).default('complete'),
    degree: z
      .number()
      .int()
      .min(2)
      .refine((k) => k % 2 === 0, 'must be even (a Harary graph of even degree)')
      .optional(),
    clipRange: posNum().optional(),
    simulateDropouts: z
      .strictObject({
        beforeMasking: z.number().int().min(0).default(0),
        afterMasking: z.number().int().min(0).default(0),
      })
      .prefault({}),
  })
  .superRefine((s, ctx) => {
    if (s.degree !== undefined && s.graph !== 'secagg+')
      ctx.addIssue({ code: 'custom', path: ['degree'], message: 'only applies to graph secagg+' });
  });

/** `privacy`: both parts optional; absent: plain FedAvg, nothing is clipped, noised or masked. */
export const privacySection = z.strictObject({
  dp: dpSection.optional(),
  secureAggregation: secureAggregationSection.optional(),
  /**
   * W: the public cap on one client's weight per round (tokens, examples or 1 per aggregation.weighting); larger
   * weights are capped (DP-FedAvg's min(n / W, 1)). Absent: the most a round can produce (localSteps x gradAccum x
   * batchSize, x maxLength for tokens). Under DP the signal scales with w / W and the noise does not: set W near
   * the clients' typical weight (the `weight_fill` of the privacy events shows sum w / (s W)).
   */
  maxWeight: z.number().int().min(1).optional(),
});

export type PrivacySpec = z.output<typeof privacySection>;
export type DpSpec = NonNullable<PrivacySpec['dp']>;
export type SecureAggregationSpec = NonNullable<PrivacySpec['secureAggregation']>;

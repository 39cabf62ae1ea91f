import type { CoordinatorSettings } from '../../libs/fedbiot/src/index.js';

/**
 * runRounds' settings for the coordinator tests' single round: every client of `clientIds` trains, seed 1, no
 * alignment steps, evaluation only at the end. The caller adds the aggregation settings.
 */
export const oneRoundOf = (clientIds: readonly string[]) =>
  ({
    rounds: 1,
    clientIds,
    perRound: { count: clientIds.length },
    seed: 1,
    preAlignSteps: 0,
    alignStepsPerRound: 0,
    evalEvery: 100,
  }) satisfies Partial<CoordinatorSettings>;

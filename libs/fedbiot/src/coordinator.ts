/**
 * The round coordinator: the bi-level schedule of FedBiOT (and of the methods that are configurations of it),
 * reaching clients, the alignment server and the evaluator only through `RoundPorts`. The standalone runner binds
 * the ports in-process (ports-local.ts); the distributed services bind the same ports to NATS.
 *
 *   pre-align R0 x E steps
 *   for each round t:  sample clients -> broadcast adapter + emulator LoRA -> K local steps per client ->
 *                      check updates -> FedAvg (token-weighted) -> E alignment steps -> evaluate -> checkpoint
 */
import type { LoraWeights } from '../../model/src/causal-lm.js';
import { assertUpdates, fedAvg, type ClientUpdate, type Weighting } from './aggregate.js';
import type { AlignmentStats, EvalScores } from './roles.js';
import { sampleClients, type PerRound } from './sampling.js';

export interface ClientRoundResult {
  readonly clientId: string;
  readonly adapter: LoraWeights;
  readonly tokens: number;
  readonly examples: number;
  readonly meanLoss: number;
}

export interface RoundPorts {
  /** Runs local training for `clients` from the broadcast; resolves with the updates that arrived. */
  trainClients(
    round: number,
    clients: readonly string[],
    adapter: LoraWeights,
    emulator: LoraWeights,
  ): Promise<ClientRoundResult[]>;
  /** E alignment steps of the emulator against the (new) adapter; null when this method does not align. */
  align(adapter: LoraWeights, steps: number): Promise<{ emulator: LoraWeights; stats: AlignmentStats } | null>;
  /** Scores per (method, client) for the current adapter and emulator. */
  evaluate(
    round: number,
    adapter: LoraWeights,
    emulator: LoraWeights,
  ): Promise<{ method: string; client: string; scores: EvalScores }[]>;
}

export interface CoordinatorSettings {
  readonly rounds: number;
  readonly clientIds: readonly string[];
  readonly perRound: PerRound;
  readonly seed: number;
  readonly preAlignSteps: number;
  readonly alignStepsPerRound: number;
  readonly weighting: Weighting;
  readonly maxUpdateNorm?: number;
  readonly evalEvery: number;
  /** Whether the broadcast carries the emulator LoRA (FedBiOT: yes, it changes every round). */
  readonly broadcastEmulator: boolean;
  /** Replaces FedAvg of the accepted updates: DP clipping and noise, secure aggregation (privacy-aggregation.ts). */
  readonly aggregate?: (
    round: number,
    global: LoraWeights,
    accepted: readonly ClientUpdate[],
  ) => { adapter: LoraWeights; events: readonly { kind: string; [k: string]: unknown }[] };
}

export interface CoordinatorState {
  /** Rounds completed so far (the next round to run). */
  readonly round: number;
  readonly adapter: LoraWeights;
  readonly emulator: LoraWeights;
  readonly preAligned: boolean;
}

/** What the coordinator reports as it goes (metrics, checkpoints, progress). */
export interface CoordinatorEvents {
  onEvent(event: { round: number; kind: string; [k: string]: unknown }): void;
  /** Called after every completed round (and after pre-alignment) with the state to persist for resume. */
  onCheckpoint(state: CoordinatorState): Promise<void>;
  onRejected?(clientId: string, reason: string): void;
}

export function loraBytes(l: LoraWeights): number {
  let n = 0;
  for (const t of l.tensors.values()) n += t.byteLength;
  return n;
}

export async function runRounds(
  ports: RoundPorts,
  settings: CoordinatorSettings,
  start: CoordinatorState,
  events: CoordinatorEvents,
): Promise<CoordinatorState> {
  let state = start;
  if (!state.preAligned) {
    const aligned = await ports.align(state.adapter, settings.preAlignSteps);
    if (aligned) {
      state = { ...state, emulator: aligned.emulator };
      events.onEvent({ round: 0, kind: 'align', phase: 'pre', ...aligned.stats });
    }
    state = { ...state, preAligned: true };
    await events.onCheckpoint(state);
  }
  for (let round = state.round; round < settings.rounds; round++) {
    const clients = sampleClients(settings.clientIds, settings.perRound, settings.seed, round);
    const results = await ports.trainClients(round, clients, state.adapter, state.emulator);
    for (const r of results) {
      events.onEvent({
        round,
        kind: 'train',
        client: r.clientId,
        loss: r.meanLoss,
        tokens: r.tokens,
        examples: r.examples,
      });
    }
    // Validate every update before averaging: one bad client (NaN, wrong shapes, too large) is rejected and
    // logged, the others are still averaged.
    const reference = new Map([...state.adapter.tensors].map(([k, v]) => [k, { shape: [v.length] }]));
    const accepted: ClientUpdate[] = [];
    for (const r of results) {
      const u: ClientUpdate = {
        clientId: r.clientId,
        tensors: r.adapter.tensors,
        tokens: r.tokens,
        examples: r.examples,
      };
      try {
        assertUpdates([u], reference, settings.maxUpdateNorm !== undefined ? { maxNorm: settings.maxUpdateNorm } : {});
        accepted.push(u);
      } catch (e) {
        events.onRejected?.(r.clientId, (e as Error).message);
        events.onEvent({ round, kind: 'rejected', client: r.clientId, reason: (e as Error).message });
      }
    }
    let adapter = state.adapter;
    if (accepted.length > 0 && settings.aggregate) {
      const r = settings.aggregate(round, state.adapter, accepted);
      adapter = r.adapter;
      for (const e of r.events) events.onEvent({ ...e, round });
    } else if (accepted.length > 0)
      adapter = { spec: state.adapter.spec, tensors: fedAvg(accepted, { weighting: settings.weighting }) };
    else events.onEvent({ round, kind: 'skipped', reason: 'no acceptable update this round; adapter kept' });
    // Bytes on the wire this round: the broadcast (adapter, and the emulator LoRA when it changes) to each
    // selected client, and one adapter update back from each.
    const down =
      clients.length * (loraBytes(state.adapter) + (settings.broadcastEmulator ? loraBytes(state.emulator) : 0));
    const up = results.reduce((s, r) => s + loraBytes(r.adapter), 0);
    events.onEvent({ round, kind: 'comm', down, up, clients: clients.length });
    let emulator = state.emulator;
    const aligned = await ports.align(adapter, settings.alignStepsPerRound);
    if (aligned) {
      emulator = aligned.emulator;
      events.onEvent({ round, kind: 'align', phase: 'round', ...aligned.stats });
    }
    state = { round: round + 1, adapter, emulator, preAligned: true };
    if ((round + 1) % settings.evalEvery === 0 || round + 1 === settings.rounds) {
      for (const e of await ports.evaluate(round + 1, adapter, emulator)) {
        events.onEvent({
          round: round + 1,
          kind: 'eval',
          method: e.method,
          client: e.client,
          test_loss: e.scores.testLoss,
          accuracy: e.scores.accuracy,
        });
      }
    }
    await events.onCheckpoint(state);
  }
  return state;
}

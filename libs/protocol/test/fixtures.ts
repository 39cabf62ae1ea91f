import type { BlobRef, ClientUpdate, TrainTask, TrainingConfig } from '../src/messages.js';

/** A syntactically valid ref (the bytes behind it do not matter for schema tests). */
export function fakeRef(bucket = 'fl-blobs-job1', fill = 'a'): BlobRef {
  return { bucket, name: fill.repeat(64), sha256: fill.repeat(64), bytes: 1024 };
}

export const training: TrainingConfig = {
  localSteps: 30,
  learningRate: 1e-4,
  batchSize: 4,
  proximalWeight: 0,
  seed: 7,
};

export function task(jobId: string, clientId: string, round = 0): TrainTask {
  return {
    protocolVersion: 1,
    jobId,
    round,
    clientId,
    model: fakeRef(),
    adapterLora: fakeRef(undefined, 'b'),
    emulatorLora: fakeRef(undefined, 'c'),
    training,
    deadlineAt: 1_900_000_000_000,
  };
}

export function update(jobId: string, clientId: string, round = 0, examples = 10): ClientUpdate {
  return {
    protocolVersion: 1,
    jobId,
    round,
    clientId,
    adapterLora: fakeRef(undefined, 'd'),
    examples,
    tokens: 40 * examples,
    meanLoss: 2.5,
    steps: 30,
    durationMs: 1200,
  };
}

/**
 * Entry point of a worker thread that owns one ORT session (started by openRunner with thread 'worker'). ORT's
 * `run()` executes synchronously inside a setImmediate and blocks its thread for the whole step
 * (docs/engine-notes.md §3); here it blocks only this worker. Feeds arrive already validated; outputs go back with
 * their buffers transferred.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import { createSession, runSession, signatureOf } from './ort-session.js';
import { toWireError, type FromWorker, type ToWorker, type WorkerInit } from './worker-protocol.js';

if (parentPort === null) throw new Error('session-worker.js must be started as a worker thread');
const port = parentPort;
const init = workerData as WorkerInit;

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

let session: ort.InferenceSession | undefined;
try {
  session = await createSession(init.source, init.options);
  post({ type: 'ready', signature: signatureOf(session, 'session worker') });
} catch (e) {
  post({ type: 'init-error', error: toWireError(e) });
}

const inFlight = new Set<Promise<void>>();

async function run(s: ort.InferenceSession, msg: Extract<ToWorker, { type: 'run' }>): Promise<void> {
  try {
    const outputs = await runSession(s, msg.feeds, msg.fetches);
    // ORT copies every output into a fresh ArrayBuffer owned by nobody else, so moving it costs nothing.
    const buffers = new Set<ArrayBuffer>();
    for (const t of Object.values(outputs)) {
      if (t.data.buffer instanceof ArrayBuffer) buffers.add(t.data.buffer);
    }
    post({ type: 'result', id: msg.id, outputs }, [...buffers]);
  } catch (e) {
    post({ type: 'run-error', id: msg.id, error: toWireError(e) });
  }
}

async function release(s: ort.InferenceSession): Promise<void> {
  session = undefined;
  // A run still waiting for its setImmediate would otherwise execute on a disposed session.
  await Promise.allSettled(inFlight);
  // The profiler writes its trace only when asked to end; release would discard it.
  if (init.options.enableProfiling === true) s.endProfiling();
  await s.release();
  post({ type: 'released' });
}

port.on('message', (msg: ToWorker) => {
  if (session === undefined) return;
  if (msg.type === 'release') {
    void release(session);
    return;
  }
  const p = run(session, msg).finally(() => inFlight.delete(p));
  inFlight.add(p);
});

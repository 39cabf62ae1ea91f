import type * as ort from 'onnxruntime-node';
import type { HostTensor } from './host-tensor.js';
import type { ModelSource, SessionSignature } from './ort-session.js';

/** Messages between a worker runner (owner thread) and session-worker.js. All plain, structured-cloneable data. */

/** workerData of a session worker. */
export interface WorkerInit {
  readonly source: ModelSource;
  readonly options: ort.InferenceSession.SessionOptions;
}

/** An error flattened for postMessage (Error subclasses and their extra fields do not survive cloning). */
export interface WireError {
  readonly name: string;
  readonly message: string;
  readonly stack?: string;
}

export type ToWorker =
  | {
      readonly type: 'run';
      readonly id: number;
      readonly feeds: Record<string, HostTensor>;
      readonly fetches: readonly string[];
    }
  | { readonly type: 'release' };

export type FromWorker =
  | { readonly type: 'ready'; readonly signature: SessionSignature }
  | { readonly type: 'init-error'; readonly error: WireError }
  | { readonly type: 'result'; readonly id: number; readonly outputs: Record<string, HostTensor> }
  | { readonly type: 'run-error'; readonly id: number; readonly error: WireError }
  | { readonly type: 'released' };

export function toWireError(e: unknown): WireError {
  if (e instanceof Error)
    return { name: e.name, message: e.message, ...(e.stack !== undefined ? { stack: e.stack } : {}) };
  return { name: 'Error', message: String(e) };
}

import type * as Ort from 'onnxruntime-node';
import { ort } from './ort.js';
import { fromOrtTensor, toOrtTensor, type HostTensor } from './host-tensor.js';
import { signaturesOf, type TensorSignature } from './signature.js';

/** Where a model comes from: an .onnx file (external data resolved next to it) or its serialized bytes. */
export type ModelSource = { readonly path: string } | { readonly bytes: Uint8Array };

/** What both runners need to know about a loaded session, as plain data (a worker posts it to its owner). */
export interface SessionSignature {
  readonly inputs: readonly TensorSignature[];
  readonly outputs: readonly TensorSignature[];
}

/** Opens an ORT session on the calling thread. */
export async function createSession(
  source: ModelSource,
  options: Ort.InferenceSession.SessionOptions,
): Promise<Ort.InferenceSession> {
  return 'path' in source
    ? ort.InferenceSession.create(source.path, options)
    : ort.InferenceSession.create(source.bytes, options);
}

export function signatureOf(session: Ort.InferenceSession, label: string): SessionSignature {
  return { inputs: signaturesOf(session.inputMetadata, label), outputs: signaturesOf(session.outputMetadata, label) };
}

/**
 * Runs `session` on already validated feeds and returns the fetched outputs as HostTensors sharing ORT's fresh output
 * arrays.
 * @throws for an output left on a GPU: onnxruntime-node 1.30 aborts the whole process when such an output is
 *   downloaded, so it is refused here instead (see SessionConfig.preferredOutputLocation)
 */
export async function runSession(
  session: Ort.InferenceSession,
  feeds: Readonly<Record<string, HostTensor>>,
  fetches: readonly string[],
): Promise<Record<string, HostTensor>> {
  const ortFeeds: Record<string, Ort.Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(t, name);
  const results = await session.run(ortFeeds, fetches);
  const out: Record<string, HostTensor> = {};
  for (const name of fetches) {
    const value = results[name];
    if (value === undefined) throw new Error(`ORT returned no value for output '${name}'`);
    out[name] = fromOrtTensor(value as Ort.Tensor, name);
  }
  return out;
}

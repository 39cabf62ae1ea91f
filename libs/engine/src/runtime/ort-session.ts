import * as ort from 'onnxruntime-node';
import { fromOrtTensor, toOrtTensor, type HostData, type HostTensor } from './host-tensor.js';
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
  options: ort.InferenceSession.SessionOptions,
): Promise<ort.InferenceSession> {
  return 'path' in source
    ? ort.InferenceSession.create(source.path, options)
    : ort.InferenceSession.create(source.bytes, options);
}

export function signatureOf(session: ort.InferenceSession, label: string): SessionSignature {
  return { inputs: signaturesOf(session.inputMetadata, label), outputs: signaturesOf(session.outputMetadata, label) };
}

/**
 * Runs `session` on already validated feeds and returns the fetched outputs in CPU memory. Outputs a WebGPU session
 * left on the GPU ('gpu-buffer') are downloaded here, because a HostTensor is CPU memory by definition.
 */
export async function runSession(
  session: ort.InferenceSession,
  feeds: Readonly<Record<string, HostTensor>>,
  fetches: readonly string[],
): Promise<Record<string, HostTensor>> {
  const ortFeeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(t, name);
  const results = await session.run(ortFeeds, fetches);
  const out: Record<string, HostTensor> = {};
  for (const name of fetches) {
    const value = results[name];
    if (value === undefined) throw new Error(`ORT returned no value for output '${name}'`);
    const t = value as ort.Tensor;
    if (t.location === 'cpu' || t.location === 'cpu-pinned') {
      out[name] = fromOrtTensor(t, name);
    } else {
      const data = (await t.getData(true)) as HostData;
      out[name] = fromOrtTensor(new ort.Tensor(t.type as 'float32', data as Float32Array, t.dims), name);
    }
  }
  return out;
}

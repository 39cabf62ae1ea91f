import type * as ort from 'onnxruntime-node';
import { assertHostTensor, type HostTensor } from './host-tensor.js';

/**
 * Element type and shape of one graph input or output as the loaded session reports them. Plain data, so a worker
 * can post it to the thread that validates feeds. `type` is ORT's type string (a DType for everything the engine
 * emits); a string dimension is symbolic and matches any size.
 */
export interface TensorSignature {
  readonly name: string;
  readonly type: string;
  readonly shape: readonly (number | string)[];
}

/** Reads the signatures of a session's inputs or outputs; non-tensor values (sequences, maps) are rejected. */
export function signaturesOf(meta: readonly ort.InferenceSession.ValueMetadata[], label: string): TensorSignature[] {
  return meta.map((m) => {
    if (!m.isTensor)
      throw new TypeError(`${label}: graph value '${m.name}' is not a tensor; only tensors are supported`);
    return { name: m.name, type: m.type, shape: [...m.shape] };
  });
}

function formatShape(shape: readonly (number | string)[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Checks a feed map against the model's input signatures before anything reaches ORT, so that every mistake is
 * reported with the input's name (ORT's own dtype error does not name it): missing and unknown feeds, malformed
 * tensors, wrong element type, wrong rank or size of a static dimension.
 * @param label names the model in messages (its path, or a description for in-memory models)
 */
export function validateFeeds(
  feeds: Readonly<Record<string, HostTensor>>,
  inputs: readonly TensorSignature[],
  label: string,
): void {
  const expected = new Set(inputs.map((s) => s.name));
  for (const name of Object.keys(feeds)) {
    if (!expected.has(name)) {
      throw new Error(`${label}: feed '${name}' is not an input of the model (inputs: ${[...expected].join(', ')})`);
    }
  }
  for (const sig of inputs) {
    const t = feeds[sig.name];
    if (t === undefined) throw new Error(`${label}: input '${sig.name}' is missing from the feeds`);
    assertHostTensor(t, sig.name, `${label}: input`);
    if (t.dtype !== sig.type) {
      throw new TypeError(`${label}: input '${sig.name}' expects ${sig.type}, got ${t.dtype}`);
    }
    const fits =
      t.shape.length === sig.shape.length && sig.shape.every((d, i) => typeof d === 'string' || d === t.shape[i]);
    if (!fits) {
      throw new RangeError(
        `${label}: input '${sig.name}' expects shape ${formatShape(sig.shape)}, got ${formatShape(t.shape)}`,
      );
    }
  }
}

/**
 * Checks requested output names against the model's outputs.
 * @returns the names to fetch: `fetches` if given, otherwise every output
 */
export function resolveFetches(
  fetches: readonly string[] | undefined,
  outputs: readonly TensorSignature[],
  label: string,
): readonly string[] {
  if (fetches === undefined) return outputs.map((s) => s.name);
  const known = new Set(outputs.map((s) => s.name));
  for (const f of fetches) {
    if (!known.has(f))
      throw new Error(`${label}: fetch '${f}' is not an output of the model (outputs: ${[...known].join(', ')})`);
  }
  if (new Set(fetches).size !== fetches.length)
    throw new Error(`${label}: fetches list an output twice: ${fetches.join(', ')}`);
  return fetches;
}

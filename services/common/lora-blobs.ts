/**
 * LoRA weights on the wire: a LoRA is one safetensors blob in the job's object store, and messages carry its
 * BlobRef. Tensors travel flat; the LoraSpec on both ends (the job plan's) gives their shapes.
 */
import type { LoraWeights, LoraSpec } from '../../libs/model/src/index.js';
import {
  decodeTensors,
  encodeTensors,
  type BlobRef,
  type BlobStore,
  type PutOptions,
  type Tensor,
} from '../../libs/protocol/src/index.js';

/** Serialises a LoRA as a safetensors blob. */
export function encodeLora(l: LoraWeights): Uint8Array {
  return encodeTensors(new Map<string, Tensor>([...l.tensors].map(([k, v]) => [k, { shape: [v.length], data: v }])), {
    lora: l.spec.name,
  });
}

/** Inverse of encodeLora; `source` names the blob in errors. Tensor names and sizes are checked by assertUpdates. */
export function decodeLora(bytes: Uint8Array, spec: LoraSpec, source: string): LoraWeights {
  const d = decodeTensors(bytes, source);
  return { spec, tensors: new Map([...d.tensors].map(([k, t]) => [k, Float32Array.from(t.data)])) };
}

/** `opts.bucket`: e.g. the client's `updateBucketName` for a trainer's update (default the store's bucket). */
export async function putLora(blobs: BlobStore, l: LoraWeights, opts: PutOptions = {}): Promise<BlobRef> {
  return blobs.put(encodeLora(l), opts);
}

export async function getLora(blobs: BlobStore, ref: BlobRef, spec: LoraSpec): Promise<LoraWeights> {
  return decodeLora(await blobs.get(ref), spec, `${ref.bucket}/${ref.name}`);
}

/** A round's broadcast (adapter and emulator LoRA), both fetched at once so their round trips overlap. */
export async function getBroadcast(
  blobs: BlobStore,
  refs: { readonly adapterLora: BlobRef; readonly emulatorLora: BlobRef },
  specs: { readonly adapter: LoraSpec; readonly emulator: LoraSpec },
): Promise<{ adapter: LoraWeights; emulator: LoraWeights }> {
  const [adapter, emulator] = await Promise.all([
    getLora(blobs, refs.adapterLora, specs.adapter),
    getLora(blobs, refs.emulatorLora, specs.emulator),
  ]);
  return { adapter, emulator };
}

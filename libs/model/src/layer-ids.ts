/**
 * Checkpoints that hold a subset of a larger model's layers (FedBiOT's emulator package: the kept layers of the
 * emulator and the adapter layers, renumbered 0..k-1 in the folder) are addressed under the source model's layer
 * numbers, so LoRA names, layer lists and adapters stay those of the full model: a LoRA trained on the package is
 * a LoRA of the full model, bit for bit, and plugs back into it without renaming.
 */
import type { WeightStore } from './llama.js';

/** `model.layers.<layer>.<rest>` -> its parts; null for a tensor outside the decoder layers. */
export function parseLayerName(name: string): { layer: number; rest: string } | null {
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  return m === null ? null : { layer: Number(m[1]), rest: m[2]! };
}

/** Checks that `ids` can number a checkpoint of `numLayers` layers: one id each, non-negative integers, ascending. */
export function checkLayerIds(ids: readonly number[], numLayers: number, source: string): void {
  if (ids.length !== numLayers)
    throw new Error(`${source}: ${ids.length} layer ids for a checkpoint of ${numLayers} layers (config.json)`);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0) throw new Error(`${source}: layer id ${id} is not a non-negative integer`);
    if (i > 0 && id <= ids[i - 1]!)
      throw new Error(`${source}: layer ids must ascend (${ids[i - 1]} then ${id} at position ${i})`);
  });
}

/**
 * `inner` (weights under the folder's own numbering 0..k-1) seen under the source numbering: `model.layers.<id>.x`
 * reads the folder's `model.layers.<position of id>.x`. A layer the folder does not hold is an error naming it.
 */
export function renumberedWeights(inner: WeightStore, layerIds: readonly number[]): WeightStore {
  const position = new Map(layerIds.map((id, i) => [id, i]));
  const local = (name: string): string => {
    const parsed = parseLayerName(name);
    if (parsed === null) return name;
    const i = position.get(parsed.layer);
    if (i === undefined)
      throw new Error(
        `${name}: layer ${parsed.layer} is not in this checkpoint (it holds layers ${layerIds.join(', ')})`,
      );
    return `model.layers.${i}.${parsed.rest}`;
  };
  return {
    layerIds,
    shape: (name) => inner.shape(local(name)),
    source: (name, dtype) => inner.source(local(name), dtype),
  };
}

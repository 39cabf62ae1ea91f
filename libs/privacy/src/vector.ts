/** Flat vectors of named tensors: the layout the aggregator and every client agree on (sorted tensor names). */

export interface TensorLayout {
  readonly names: readonly string[];
  readonly lengths: readonly number[];
  readonly total: number;
}

/** Layout from tensor name -> element count, names sorted so every party derives the same order. */
export function tensorLayout(sizes: ReadonlyMap<string, number>): TensorLayout {
  const names = [...sizes.keys()].toSorted();
  const lengths = names.map((n) => sizes.get(n)!);
  return { names, lengths, total: lengths.reduce((a, b) => a + b, 0) };
}

export function flatten(layout: TensorLayout, tensors: ReadonlyMap<string, ArrayLike<number>>): Float32Array {
  const out = new Float32Array(layout.total);
  let off = 0;
  layout.names.forEach((name, i) => {
    const t = tensors.get(name);
    if (t === undefined || t.length !== layout.lengths[i])
      throw new RangeError(`tensor ${name} missing or of another length`);
    out.set(t, off);
    off += t.length;
  });
  if (tensors.size !== layout.names.length) throw new RangeError('tensors not in the layout');
  return out;
}

export function unflatten(layout: TensorLayout, flat: ArrayLike<number>): Map<string, Float32Array> {
  if (flat.length !== layout.total) throw new RangeError(`vector of ${flat.length}, layout of ${layout.total}`);
  const out = new Map<string, Float32Array>();
  let off = 0;
  layout.names.forEach((name, i) => {
    const n = layout.lengths[i]!;
    out.set(
      name,
      Float32Array.from({ length: n }, (_, k) => flat[off + k]!),
    );
    off += n;
  });
  return out;
}

/** A tensor's shapes or dtypes do not fit the op it is given to. The message names the op and the shapes. */
export class ShapeError extends Error {
  override readonly name = 'ShapeError';
}

/** The graph is ill-formed: a tensor of another graph, an unknown tensor, a gradient that cannot be taken. */
export class GraphError extends Error {
  override readonly name = 'GraphError';
}

/** Renders a shape the way error messages print it: [2, 3, 4]. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

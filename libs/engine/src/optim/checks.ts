/**
 * Input checks shared by the optimizers. They run per tensor, never per element, so they cost nothing next to the
 * update loops, and they turn a mismatched trainable set into an error naming the tensor instead of silent garbage.
 */
import type { OptimizerKind, OptimizerState, ParamMap } from './types.js';

/** Records each parameter's length; the optimizer's parameter set is fixed from then on. */
export function paramSizes(params: ParamMap, owner: string): Map<string, number> {
  const sizes = new Map<string, number>();
  for (const [name, values] of params) {
    if (!(values instanceof Float32Array)) throw new Error(`${owner}: parameter "${name}" is not a Float32Array`);
    sizes.set(name, values.length);
  }
  return sizes;
}

/** The parameter array for `name`, checked for presence and length. */
export function paramFor(params: ReadonlyMap<string, Float32Array>, name: string, size: number, owner: string) {
  const p = params.get(name);
  if (p === undefined) throw new Error(`${owner}.step: parameter "${name}" is missing from params`);
  if (p.length !== size) {
    throw new Error(`${owner}.step: parameter "${name}" has ${p.length} values, the optimizer was built for ${size}`);
  }
  return p;
}

/** The gradient array for `name`, checked for presence and length. */
export function gradFor(grads: ReadonlyMap<string, Float32Array>, name: string, size: number, owner: string) {
  const g = grads.get(name);
  if (g === undefined) throw new Error(`${owner}.step: gradient for parameter "${name}" is missing`);
  if (g.length !== size) throw new Error(`${owner}.step: gradient "${name}" has ${g.length} values, expected ${size}`);
  return g;
}

/** A gradient for a tensor the optimizer does not own means the caller's trainable set is not the optimizer's. */
export function rejectUnknownGrads(
  grads: ReadonlyMap<string, Float32Array>,
  sizes: ReadonlyMap<string, number>,
  owner: string,
) {
  for (const name of grads.keys()) {
    if (!sizes.has(name))
      throw new Error(`${owner}.step: gradient "${name}" is not one of this optimizer's parameters`);
  }
}

/**
 * Validates kind, step and slots of a state against this optimizer's parameters and slot names, before anything
 * is changed. Every parameter must have exactly `slotNames`, each a Float32Array of the parameter's length.
 */
export function checkState(
  state: OptimizerState,
  kind: OptimizerKind,
  sizes: ReadonlyMap<string, number>,
  slotNames: readonly string[],
  owner: string,
): void {
  if (typeof state !== 'object' || state === null) throw new Error(`${owner}.importState: state is not an object`);
  if (state.kind !== kind) {
    throw new Error(`${owner}.importState: state is for optimizer kind '${String(state.kind)}', not '${kind}'`);
  }
  if (!Number.isInteger(state.step) || state.step < 0) {
    throw new Error(`${owner}.importState: step must be a non-negative integer, got ${String(state.step)}`);
  }
  const slots = state.slots;
  if (typeof slots !== 'object' || slots === null) throw new Error(`${owner}.importState: slots is not an object`);
  for (const name of Object.keys(slots)) {
    if (!sizes.has(name)) throw new Error(`${owner}.importState: state has slots for unknown parameter "${name}"`);
  }
  for (const [name, size] of sizes) {
    const own = Object.prototype.hasOwnProperty.call(slots, name) ? slots[name] : undefined;
    if (own === undefined) throw new Error(`${owner}.importState: no slots for parameter "${name}"`);
    for (const slot of Object.keys(own)) {
      if (!slotNames.includes(slot)) {
        throw new Error(`${owner}.importState: parameter "${name}" has unexpected slot "${slot}"`);
      }
    }
    for (const slot of slotNames) {
      const buf = own[slot];
      if (buf === undefined) throw new Error(`${owner}.importState: parameter "${name}" is missing slot "${slot}"`);
      if (!(buf instanceof Float32Array)) {
        throw new Error(`${owner}.importState: slot "${slot}" of parameter "${name}" is not a Float32Array`);
      }
      if (buf.length !== size) {
        throw new Error(
          `${owner}.importState: slot "${slot}" of parameter "${name}" has ${buf.length} values, expected ${size}`,
        );
      }
    }
  }
}

/** Reads a finite number field from hyper-parameters of a state, or throws naming the field. */
export function hyperNumber(hyper: Record<string, unknown>, key: string, owner: string): number {
  const v = hyper[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Error(`${owner}.importState: hyper.${key} must be a finite number, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Rejects hyper-parameter keys a rule does not know, so a typo in a hand-edited checkpoint is not ignored. */
export function rejectUnknownHyper(hyper: Record<string, unknown>, known: readonly string[], owner: string): void {
  if (typeof hyper !== 'object' || hyper === null) throw new Error(`${owner}.importState: hyper is not an object`);
  for (const key of Object.keys(hyper)) {
    if (!known.includes(key)) throw new Error(`${owner}.importState: unknown hyper-parameter "${key}"`);
  }
}

/** Every parameter present with its gradient, both of the right size, and no gradient for an unknown name. */
export function checkStepInputs(
  params: ReadonlyMap<string, Float32Array>,
  grads: ReadonlyMap<string, Float32Array>,
  sizes: ReadonlyMap<string, number>,
  owner: string,
): void {
  rejectUnknownGrads(grads, sizes, owner);
  for (const [name, size] of sizes) {
    paramFor(params, name, size, owner);
    gradFor(grads, name, size, owner);
  }
}

/**
 * Splits an optimizer state into a JSON string and named fp32 tensors, and back, so that any tensor container
 * (safetensors `__metadata__` + tensors, an object store blob pair, ...) can persist it. The JSON records which
 * tensor holds which slot, so tensor names are never parsed and parameter names may contain any character.
 */
import { validateSchedule } from './schedule.js';
import type { OptimizerKind, OptimizerState } from './types.js';

/** Identifies the meta layout; bump when it changes incompatibly. */
export const OPTIMIZER_STATE_FORMAT = 'fedbiot-ts/optimizer-state@1';

interface SlotRef {
  tensor: string;
  length: number;
}

interface StateMeta {
  format: string;
  kind: OptimizerKind;
  step: number;
  hyper: OptimizerState['hyper'];
  schedule: OptimizerState['schedule'];
  slots: Record<string, Record<string, SlotRef>>;
}

/**
 * @param prefix prepended to every tensor name (default `"optim."`), so the tensors can share a file with weights.
 * @returns `meta`: JSON text; `tensors`: `<prefix><param>.<slot>` -> the state's own buffers (not copied).
 */
export function stateToTensors(
  state: OptimizerState,
  prefix = 'optim.',
): { meta: string; tensors: Map<string, Float32Array> } {
  const tensors = new Map<string, Float32Array>();
  const slots: StateMeta['slots'] = {};
  for (const [param, own] of Object.entries(state.slots)) {
    slots[param] = {};
    for (const [slot, buf] of Object.entries(own)) {
      const tensor = `${prefix}${param}.${slot}`;
      // "a.b"+"c" and "a"+"b.c" would collide; refuse rather than lose a buffer.
      if (tensors.has(tensor)) throw new Error(`stateToTensors: two slots map to tensor name "${tensor}"`);
      tensors.set(tensor, buf);
      slots[param][slot] = { tensor, length: buf.length };
    }
  }
  const meta: StateMeta = {
    format: OPTIMIZER_STATE_FORMAT,
    kind: state.kind,
    step: state.step,
    hyper: state.hyper,
    schedule: state.schedule,
    slots,
  };
  return { meta: JSON.stringify(meta), tensors };
}

function fail(msg: string): never {
  throw new Error(`optimizer state: ${msg}`);
}

/**
 * Rebuilds a state from `stateToTensors` output. Checks the structure and that every referenced tensor exists with
 * the recorded length; whether the state fits a given optimizer is checked by its `importState`. Tensors not named
 * in `meta` are ignored (they may be model weights in the same file). Buffers are used as given, not copied.
 */
export function stateFromTensors(meta: string, tensors: ReadonlyMap<string, Float32Array>): OptimizerState {
  let parsed: unknown;
  try {
    parsed = JSON.parse(meta);
  } catch (e) {
    fail(`meta is not valid JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null) fail('meta is not a JSON object');
  const m = parsed as Partial<StateMeta>;
  if (m.format !== OPTIMIZER_STATE_FORMAT)
    fail(`meta.format is ${JSON.stringify(m.format)}, expected "${OPTIMIZER_STATE_FORMAT}"`);
  if (m.kind !== 'adamw' && m.kind !== 'sgd') fail(`meta.kind must be 'adamw' or 'sgd', got ${JSON.stringify(m.kind)}`);
  if (!Number.isInteger(m.step) || (m.step as number) < 0)
    fail(`meta.step must be a non-negative integer, got ${JSON.stringify(m.step)}`);
  if (typeof m.hyper !== 'object' || m.hyper === null || Array.isArray(m.hyper)) fail('meta.hyper must be an object');
  const schedule = validateSchedule(m.schedule, 'optimizer state: meta.schedule');
  if (typeof m.slots !== 'object' || m.slots === null || Array.isArray(m.slots)) fail('meta.slots must be an object');
  const slots: OptimizerState['slots'] = {};
  for (const [param, own] of Object.entries(m.slots)) {
    if (typeof own !== 'object' || own === null) fail(`meta.slots["${param}"] must be an object`);
    slots[param] = {};
    for (const [slot, ref] of Object.entries(own)) {
      const where = `slot "${slot}" of parameter "${param}"`;
      if (typeof ref?.tensor !== 'string' || !Number.isInteger(ref.length))
        fail(`${where}: meta entry must be { tensor, length }`);
      const buf = tensors.get(ref.tensor);
      if (buf === undefined) fail(`${where}: tensor "${ref.tensor}" is missing`);
      if (!(buf instanceof Float32Array)) fail(`${where}: tensor "${ref.tensor}" is not float32`);
      if (buf.length !== ref.length)
        fail(`${where}: tensor "${ref.tensor}" has ${buf.length} values, meta says ${ref.length}`);
      slots[param][slot] = buf;
    }
  }
  return { kind: m.kind, step: m.step as number, hyper: m.hyper, schedule, slots };
}

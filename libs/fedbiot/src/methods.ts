/**
 * The training methods a job can run and what each one is: the one vocabulary for method names (job.method, the
 * result rows of results.json, the stages of a run, the rows the evaluator reports). Everything that differs between
 * the methods is a column of METHOD_TABLE; the job runner (job.ts) and the services read the table, they do not test
 * method names.
 */

/** Training methods a job can run (docs/fedbiot-algorithm.md, "Our decisions" 8). */
export const METHODS = ['fedbiot', 'offsite-tuning', 'fedavg-lora', 'local-only'] as const;
export type Method = (typeof METHODS)[number];

/**
 * Model variants a run reports, in report order: `base` (the untouched full model, zero-shot), then the rows of the
 * methods (METHOD_TABLE[m].rows). AdapEmu = emulator + adapter (what clients run); AdapFu = the full model with the
 * adapter plugged back in (what the model owner ships).
 */
export const RESULT_METHODS = [
  'base',
  'fedbiot-adapemu',
  'fedbiot-adapfu',
  'offsite-tuning',
  'local-only',
  'fedavg-lora',
] as const;
export type ResultMethod = (typeof RESULT_METHODS)[number];

/** The result row of the base model. */
export const BASE_ROW = 'base' satisfies ResultMethod;

/** Which model an adapter is evaluated on: the emulator (client layers + emulator LoRA) or the full model. */
export type EvalOn = 'emu' | 'full';

export interface MethodRow {
  readonly row: ResultMethod;
  readonly on: EvalOn;
}

export interface MethodInfo {
  /** Trained through the round coordinator (FedAvg of client updates); false: each client alone, never averaged. */
  readonly federated: boolean;
  /**
   * Whether the job's split takes split.adapterBottom bottom layers into the adapter when this is the job's method
   * (the published FedOT split). A baseline always trains the job method's adapter layers, so that the comparison
   * isolates the method (equal trainable parameters, equal client compute).
   */
  readonly bottomAdapter: boolean;
  /**
   * Emulator alignment on public data: 'per-round' (FedBiOT: alignment.preRounds x stepsPerRound before round 0,
   * stepsPerRound after each round, the emulator LoRA broadcast every round), 'one-shot' (baselines.oneShotAlignSteps
   * before round 0, none after), 'none'.
   */
  readonly alignment: 'per-round' | 'one-shot' | 'none';
  /** What a client trains the adapter on: the emulator (the split's client layers, emulator LoRA frozen) or the full model. */
  readonly clientModel: 'emulator' | 'full';
  /** The result rows the method reports and the model each is evaluated on. */
  readonly rows: readonly MethodRow[];
}

export const METHOD_TABLE = {
  fedbiot: {
    federated: true,
    bottomAdapter: false,
    alignment: 'per-round',
    clientModel: 'emulator',
    rows: [
      { row: 'fedbiot-adapemu', on: 'emu' },
      { row: 'fedbiot-adapfu', on: 'full' },
    ],
  },
  'offsite-tuning': {
    federated: true,
    bottomAdapter: true,
    alignment: 'one-shot',
    clientModel: 'emulator',
    rows: [{ row: 'offsite-tuning', on: 'full' }],
  },
  'fedavg-lora': {
    federated: true,
    bottomAdapter: false,
    alignment: 'none',
    clientModel: 'full',
    rows: [{ row: 'fedavg-lora', on: 'full' }],
  },
  'local-only': {
    federated: false,
    bottomAdapter: false,
    alignment: 'none',
    clientModel: 'emulator',
    rows: [{ row: 'local-only', on: 'full' }],
  },
} as const satisfies Record<Method, MethodInfo>;

/** Baselines a job with method `method` may run besides it, in the order they run. */
export const BASELINES_OF: Readonly<Record<Method, readonly Method[]>> = {
  fedbiot: ['offsite-tuning', 'local-only', 'fedavg-lora'],
  'offsite-tuning': ['local-only'],
  'fedavg-lora': ['local-only'],
  'local-only': [],
};

/** Which baselines a job spec enables (its `baselines` section). */
export interface BaselineFlags {
  readonly offsiteTuning: boolean;
  readonly localOnly: boolean;
  readonly fedavgLora: boolean;
}

const FLAG_OF = {
  'offsite-tuning': 'offsiteTuning',
  'local-only': 'localOnly',
  'fedavg-lora': 'fedavgLora',
} as const satisfies Partial<Record<Method, keyof BaselineFlags>>;

/** The methods a job runs, in order: its method, then the baselines of it that `baselines` enables. */
export function methodsRun(method: Method, baselines: BaselineFlags): Method[] {
  return [method, ...BASELINES_OF[method].filter((m) => m !== 'fedbiot' && baselines[FLAG_OF[m]])];
}

/**
 * Emulator alignment steps of `method` on public data, before round 0 (`pre`) and after each round (`perRound`):
 * per-round alignment runs alignment.preRounds x stepsPerRound, then stepsPerRound; one-shot alignment runs
 * baselines.oneShotAlignSteps (absent: none) once.
 */
export function alignmentSteps(
  method: Method,
  alignment: { readonly preRounds: number; readonly stepsPerRound: number },
  oneShotAlignSteps: number | undefined,
): { pre: number; perRound: number } {
  switch (METHOD_TABLE[method].alignment) {
    case 'per-round':
      return { pre: alignment.preRounds * alignment.stepsPerRound, perRound: alignment.stepsPerRound };
    case 'one-shot':
      return { pre: oneShotAlignSteps ?? 0, perRound: 0 };
    case 'none':
      return { pre: 0, perRound: 0 };
  }
}

/** The result row of `method` evaluated on `on` (e.g. fedbiot on the emulator: fedbiot-adapemu). */
export function resultRow(method: Method, on: EvalOn): ResultMethod {
  const r = METHOD_TABLE[method].rows.find((x) => x.on === on);
  if (!r)
    throw new Error(`method ${method} reports no row evaluated on the ${on === 'emu' ? 'emulator' : 'full model'}`);
  return r.row;
}

/** The result rows a job produces: base, the method's rows, then the enabled baselines' (in RESULT_METHODS order). */
export function evalMethodsFor(method: Method, baselines: BaselineFlags): ResultMethod[] {
  // Every enabled baseline's rows, also those of a baseline the method does not run (a spec may name them).
  const enabled = [method, ...(Object.keys(FLAG_OF) as (keyof typeof FLAG_OF)[]).filter((m) => baselines[FLAG_OF[m]])];
  const out = new Set<ResultMethod>([BASE_ROW, ...enabled.flatMap((m) => METHOD_TABLE[m].rows.map((r) => r.row))]);
  return RESULT_METHODS.filter((m) => out.has(m));
}

import { Worker } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import { cloneHostTensor, type HostTensor } from './host-tensor.js';
import { createSession, runSession, signatureOf, type ModelSource, type SessionSignature } from './ort-session.js';
import { resolveProvider, type ExecutionProvider } from './providers.js';
import { buildSessionOptions, type SessionConfig } from './session-options.js';
import { resolveFetches, validateFeeds } from './signature.js';
import { toWireError, type FromWorker, type ToWorker, type WireError, type WorkerInit } from './worker-protocol.js';

export type { ModelSource } from './ort-session.js';

/** One loaded model, run on the calling thread or in a worker thread (see {@link openRunner}). */
export interface ModelRunner {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** The provider the session actually runs on (after any fallback to 'cpu'). */
  readonly provider: ExecutionProvider;
  /**
   * Runs the model. Every input must be fed with its exact dtype and static shape; errors name the input.
   * @param fetches outputs to compute; default all
   * @returns the fetched outputs, in fresh CPU arrays owned by the caller
   * @throws {@link RunnerError} for failures inside ORT, naming the model
   */
  run(feeds: Readonly<Record<string, HostTensor>>, fetches?: readonly string[]): Promise<Record<string, HostTensor>>;
  /** Ends profiling (writing the trace) if enabled, frees the session and, for a worker runner, ends the worker. */
  release(): Promise<void>;
}

/** Options of {@link openRunner}. */
export interface OpenRunnerOptions extends Omit<SessionConfig, 'provider' | 'preferredOutputLocation'> {
  /** Provider requested; probed once per process (see resolveProvider). Default 'cpu'. */
  readonly provider?: ExecutionProvider;
  /** Fall back to 'cpu' with one warning when the provider is unavailable; false throws. Default true. */
  readonly fallbackToCpu?: boolean;
  /** Where the fallback warning goes. Default console.warn. */
  readonly warn?: (message: string) => void;
  /**
   * 'worker' (default): the session lives in its own worker thread, so a step does not block the caller's event
   * loop (ORT's run blocks its thread for the whole step, docs/engine-notes.md §3), and sessions in different workers
   * run in parallel. 'main': the session runs on the calling thread, saving the message round trip (tens of µs per
   * run).
   */
  readonly thread?: 'worker' | 'main';
  /** Names the model in errors. Default: the path, or "in-memory model (N bytes)". */
  readonly label?: string;
}

/**
 * An error from loading or running a model, on either thread. `message` is `<model label>: <original message>`;
 * `originalName` keeps the original error's name (Error subclasses do not survive postMessage); for errors from a
 * worker, `cause` carries the worker-side stack.
 */
export class RunnerError extends Error {
  override readonly name = 'RunnerError';
  readonly model: string;
  readonly originalName: string;
  readonly originalMessage: string;

  constructor(model: string, original: WireError) {
    super(`${model}: ${original.message}`, { cause: original });
    this.model = model;
    this.originalName = original.name;
    this.originalMessage = original.message;
  }
}

function labelOf(source: ModelSource, label: string | undefined): string {
  if (label !== undefined) return label;
  return 'path' in source ? source.path : `in-memory model (${source.bytes.byteLength} bytes)`;
}

/** Checks feeds and fetches on the calling thread, so mistakes surface with the input's name before any copy. */
function prepare(
  sig: SessionSignature,
  label: string,
  feeds: Readonly<Record<string, HostTensor>>,
  fetches: readonly string[] | undefined,
): readonly string[] {
  validateFeeds(feeds, sig.inputs, label);
  return resolveFetches(fetches, sig.outputs, label);
}

class MainThreadRunner implements ModelRunner {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  #session: ort.InferenceSession | undefined;

  constructor(
    session: ort.InferenceSession,
    private readonly sig: SessionSignature,
    private readonly label: string,
    readonly provider: ExecutionProvider,
    private readonly profiling: boolean,
  ) {
    this.#session = session;
    this.inputNames = sig.inputs.map((s) => s.name);
    this.outputNames = sig.outputs.map((s) => s.name);
  }

  async run(
    feeds: Readonly<Record<string, HostTensor>>,
    fetches?: readonly string[],
  ): Promise<Record<string, HostTensor>> {
    const session = this.#session;
    if (session === undefined) throw new Error(`${this.label}: run() after release()`);
    const names = prepare(this.sig, this.label, feeds, fetches);
    try {
      return await runSession(session, feeds, names);
    } catch (e) {
      throw new RunnerError(this.label, toWireError(e));
    }
  }

  async release(): Promise<void> {
    const session = this.#session;
    if (session === undefined) return;
    this.#session = undefined;
    if (this.profiling) session.endProfiling();
    await session.release();
  }
}

interface Pending {
  resolve(outputs: Record<string, HostTensor>): void;
  reject(e: Error): void;
}

/**
 * Feeds are COPIED: each feed's data is sliced into a fresh, exactly sized array on the calling thread and that copy
 * is transferred, so the caller may reuse or mutate its arrays as soon as run() returns its promise, and a view into
 * a larger buffer does not ship the whole buffer. Outputs are TRANSFERRED back (ORT already copied them into fresh
 * buffers), so results cost no second copy.
 */
class WorkerRunner implements ModelRunner {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #failure: Error | undefined;
  #released: Promise<void> | undefined;

  private constructor(
    private readonly worker: Worker,
    private readonly sig: SessionSignature,
    private readonly label: string,
    readonly provider: ExecutionProvider,
  ) {
    this.inputNames = sig.inputs.map((s) => s.name);
    this.outputNames = sig.outputs.map((s) => s.name);
    worker.on('message', (msg: FromWorker) => this.#onMessage(msg));
    worker.on('error', (e) =>
      this.#fail(new RunnerError(label, { ...toWireError(e), message: `session worker crashed: ${e.message}` })),
    );
    worker.on('exit', (code) => this.#fail(new Error(`${label}: session worker exited (code ${code})`)));
    // An idle worker must not keep the process alive; a pending run must.
    worker.unref();
  }

  static async open(
    source: ModelSource,
    options: ort.InferenceSession.SessionOptions,
    label: string,
    provider: ExecutionProvider,
  ): Promise<WorkerRunner> {
    const init: WorkerInit = { source, options };
    const worker = new Worker(new URL('./session-worker.js', import.meta.url), { workerData: init });
    const sig = await new Promise<SessionSignature>((resolve, reject) => {
      const onMessage = (msg: FromWorker): void => {
        cleanup();
        if (msg.type === 'ready') resolve(msg.signature);
        else if (msg.type === 'init-error') reject(new RunnerError(label, msg.error));
        else reject(new Error(`${label}: session worker sent '${msg.type}' before it was ready`));
      };
      const onError = (e: Error): void => {
        cleanup();
        reject(new RunnerError(label, { ...toWireError(e), message: `session worker failed to start: ${e.message}` }));
      };
      const onExit = (code: number): void => {
        cleanup();
        reject(new Error(`${label}: session worker exited (code ${code}) while loading the model`));
      };
      const cleanup = (): void => {
        worker.off('message', onMessage).off('error', onError).off('exit', onExit);
      };
      worker.on('message', onMessage).on('error', onError).on('exit', onExit);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return new WorkerRunner(worker, sig, label, provider);
  }

  run(feeds: Readonly<Record<string, HostTensor>>, fetches?: readonly string[]): Promise<Record<string, HostTensor>> {
    try {
      if (this.#released !== undefined) throw new Error(`${this.label}: run() after release()`);
      if (this.#failure !== undefined) throw this.#failure;
      const names = prepare(this.sig, this.label, feeds, fetches);
      const copies: Record<string, HostTensor> = {};
      const transfer: ArrayBuffer[] = [];
      for (const [name, t] of Object.entries(feeds)) {
        const c = cloneHostTensor(t);
        copies[name] = c;
        transfer.push(c.data.buffer as ArrayBuffer);
      }
      const id = this.#nextId++;
      const result = new Promise<Record<string, HostTensor>>((resolve, reject) =>
        this.#pending.set(id, { resolve, reject }),
      );
      if (this.#pending.size === 1) this.worker.ref();
      const msg: ToWorker = { type: 'run', id, feeds: copies, fetches: names };
      this.worker.postMessage(msg, transfer);
      return result;
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }

  #settle(id: number): Pending | undefined {
    const p = this.#pending.get(id);
    this.#pending.delete(id);
    // While releasing, the worker stays referenced until it confirms, so the process cannot exit in between.
    if (this.#pending.size === 0 && this.#released === undefined) this.worker.unref();
    return p;
  }

  #onMessage(msg: FromWorker): void {
    if (msg.type === 'result') this.#settle(msg.id)?.resolve(msg.outputs);
    else if (msg.type === 'run-error') this.#settle(msg.id)?.reject(new RunnerError(this.label, msg.error));
  }

  #fail(e: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = e;
    for (const id of this.#pending.keys()) this.#settle(id)?.reject(e);
  }

  release(): Promise<void> {
    this.#released ??= (async () => {
      if (this.#failure === undefined) {
        // Let the worker finish queued runs and end profiling before it is terminated.
        const done = new Promise<void>((resolve) => {
          const onMessage = (msg: FromWorker): void => {
            if (msg.type !== 'released') return;
            this.worker.off('message', onMessage).off('exit', onExit);
            resolve();
          };
          const onExit = (): void => {
            this.worker.off('message', onMessage).off('exit', onExit);
            resolve();
          };
          this.worker.on('message', onMessage).on('exit', onExit);
        });
        this.worker.ref();
        const msg: ToWorker = { type: 'release' };
        this.worker.postMessage(msg, []);
        await done;
      }
      this.#failure ??= new Error(`${this.label}: runner was released`);
      await this.worker.terminate();
    })();
    return this.#released;
  }
}

/**
 * Loads a model into a {@link ModelRunner}. The requested provider is resolved first (probed once per process;
 * see resolveProvider), then ORT options are built from `opts` (see buildSessionOptions) and the session is created
 * in a worker thread (default) or on the calling thread.
 * @throws ProviderUnavailableError when the provider is unavailable and fallbackToCpu is false;
 *   {@link RunnerError} naming the model when ORT cannot load it
 */
export async function openRunner(model: ModelSource, opts: OpenRunnerOptions = {}): Promise<ModelRunner> {
  const label = labelOf(model, opts.label);
  const provider = await resolveProvider(opts.provider ?? 'cpu', {
    fallback: opts.fallbackToCpu ?? true,
    ...(opts.warn !== undefined ? { warn: opts.warn } : {}),
  });
  const {
    provider: _requested,
    thread: _thread,
    label: _label,
    warn: _warn,
    fallbackToCpu: _fallback,
    ...config
  } = opts;
  // Outputs must come back as HostTensors, so they stay in CPU memory (see SessionConfig.preferredOutputLocation).
  const options = buildSessionOptions({ ...config, provider, preferredOutputLocation: 'cpu' });
  if ((opts.thread ?? 'worker') === 'worker') return WorkerRunner.open(model, options, label, provider);
  let session: ort.InferenceSession;
  try {
    session = await createSession(model, options);
  } catch (e) {
    throw new RunnerError(label, toWireError(e));
  }
  return new MainThreadRunner(session, signatureOf(session, label), label, provider, options.enableProfiling === true);
}

/**
 * JetStream work-queue consumption as a NestJS transport strategy: a trainer's controller declares
 * `@MessagePattern(TASK_TRAIN)` / `@MessagePattern(TASK_EVALUATE)` handlers, and this server pulls tasks from the
 * job's work queue (libs/protocol WorkQueue: one task at a time, ack only after the handler's result, redelivery
 * after ackWait) and dispatches each to the handler of its kind.
 *
 * Why a custom strategy: Nest's built-in NATS transport is core NATS only (no JetStream), and the kept package
 * `@nestjs-plugins/nestjs-nats-jetstream-transport` (2.2.6) depends on the `nats` v2 client and reflect-metadata 0.1,
 * so it would add a second NATS client beside @nats-io 3.x, outside the per-identity permissions and inbox prefixes
 * this project's connections use (libs/protocol auth.ts, credentials.ts). See services/README.md.
 *
 * Outages: the pull loop ends when a pull fails, and opening the consumer throws while NATS is down; the server
 * then pulls again after RETRY_MS, forever, re-creating the durable consumer if the server lost it. Unacked work is
 * redelivered by JetStream either way.
 */
import { BaseRpcContext, Server, type CustomTransportStrategy } from '@nestjs/microservices';
import { lastValueFrom } from 'rxjs';
import type { ConsumeOptions, Consumption, TaskContext, TrainTask, WorkQueue } from '../../libs/protocol/src/index.js';
import type { JsonLogger } from './logger.js';

/** Pattern of a training task (TrainTask without kind, or kind 'train'). */
export const TASK_TRAIN = 'task.train';
/** Pattern of a private-evaluation task (kind 'evaluate'). */
export const TASK_EVALUATE = 'task.evaluate';

/** Pause before pulling again after the pull loop ended or failed (ms). */
const RETRY_MS = 1000;

/** What a handler gets besides the task: the delivery and the ack-timer reset (`@Ctx()`). */
export class WorkQueueContext extends BaseRpcContext<[TaskContext]> {
  get task(): TaskContext {
    return this.args[0];
  }
}

export interface WorkQueueSource {
  /** Resolves with the queue once the service can work (its model loaded); null: stopped before that. */
  readonly queue: () => Promise<WorkQueue | null>;
  readonly consume: ConsumeOptions;
  /** True while the connection is closed for good (the loop then ends). */
  readonly closed: () => boolean;
}

export class JetStreamWorkQueueServer extends Server implements CustomTransportStrategy {
  #stopping = false;
  #consumption: Consumption | undefined;
  #loop: Promise<void> = Promise.resolve();

  constructor(
    private readonly source: WorkQueueSource,
    private readonly log: JsonLogger,
  ) {
    super();
  }

  listen(callback: () => void): void {
    this.#loop = this.#run().catch((e: unknown) => {
      if (!this.#stopping) this.log.write('error', 'work queue consumption stopped', { error: (e as Error).message });
    });
    callback();
  }

  async #run(): Promise<void> {
    const queue = await this.source.queue();
    if (!queue) return;
    const handle = (task: TrainTask, tc: TaskContext): Promise<void> => this.#dispatch(task, tc);
    for (let failures = 0, pulls = 0; !this.#stopping && !this.source.closed();) {
      try {
        this.#consumption = await queue.consume(handle, this.source.consume);
        if (pulls++ > 0) this.log.info('pulling tasks again', { afterFailures: failures });
        failures = 0;
        await this.#consumption.done;
      } catch (e) {
        if (failures++ === 0)
          this.log.write('warn', 'work queue unavailable; retrying every second', { error: (e as Error).message });
      }
      if (!this.#stopping) await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }

  /** The task's handler by kind; resolves when its result (Promise or Observable) completes, so the queue acks. */
  async #dispatch(task: TrainTask, tc: TaskContext): Promise<void> {
    const pattern = task.kind === 'evaluate' ? TASK_EVALUATE : TASK_TRAIN;
    const handler = this.getHandlerByPattern(pattern);
    if (!handler) throw new Error(`no handler for ${pattern} (round ${task.round}, client ${task.clientId})`);
    const result = await handler(task, new WorkQueueContext([tc]));
    await lastValueFrom(this.transformToObservable(result), { defaultValue: undefined });
  }

  async close(): Promise<void> {
    this.#stopping = true;
    await this.#consumption?.stop();
    await this.#loop;
  }

  on(): never {
    throw new Error('JetStreamWorkQueueServer: no transport events to listen to (see the trainer logs)');
  }

  unwrap<T>(): T {
    throw new Error("JetStreamWorkQueueServer: no underlying client to unwrap (the WorkQueue is the service's)");
  }
}

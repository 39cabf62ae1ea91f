/**
 * The trainer's message handlers: one per task kind, delivered by the JetStream work-queue transport
 * (services/common/jetstream-transport.ts). A handler's result settles the task: resolved, it is acked; thrown, it
 * is redelivered after ackWait (or terminated on its last delivery). The trainer service and the NATS connection
 * are injected by ClientTrainerModule.
 */
import { Controller, Inject } from '@nestjs/common';
import { Ctx, MessagePattern, Payload } from '@nestjs/microservices';
import {
  ClientMetricsSchema,
  clientMetricsSubject,
  publishMessage,
  type TrainTask,
} from '../../libs/protocol/src/index.js';
import type { ServiceConnection } from '../common/connection.js';
import { ROLE } from '../common/http.js';
import { TASK_EVALUATE, TASK_TRAIN, WorkQueueContext } from '../common/jetstream-transport.js';
import { NATS_CONNECTION } from '../common/providers.js';
import type { ClientTrainer } from './trainer.js';

@Controller()
export class TrainerController {
  constructor(
    @Inject(ROLE) private readonly trainer: ClientTrainer,
    @Inject(NATS_CONNECTION) readonly conn: ServiceConnection,
  ) {}

  /** K local steps of the task's client from the round's broadcast; uploads and publishes the update. */
  @MessagePattern(TASK_TRAIN)
  train(@Payload() task: TrainTask, @Ctx() ctx: WorkQueueContext): Promise<void> {
    // The update's publication stays in the trainer: it sits between two KV writes whose order makes a redelivered
    // task recompute the same update.
    return this.trainer.train(task, ctx.task);
  }

  /**
   * Private evaluation: AdapEmu on the client's own test set; only the numbers are published, on the client's
   * metrics subject, and flushed before the task is acked.
   */
  @MessagePattern(TASK_EVALUATE)
  async evaluate(@Payload() task: TrainTask): Promise<void> {
    const m = await this.trainer.evaluate(task);
    if (m === null) return;
    publishMessage(this.conn.nc, clientMetricsSubject(m.jobId, m.round, m.clientId), ClientMetricsSchema, m);
    await this.conn.nc.flush();
    const { round, clientId, loss, accuracy, items, durationMs } = m;
    this.trainer.log.info('evaluated', { round, clientId, loss, accuracy, items, durationMs });
  }
}

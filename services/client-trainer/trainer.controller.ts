/**
 * The trainer's message handlers: one per task kind, delivered by the JetStream work-queue transport
 * (services/common/jetstream-transport.ts). A handler's result settles the task: resolved, it is acked; thrown, it
 * is redelivered after ackWait (or terminated on its last delivery).
 */
import { Controller, Inject } from '@nestjs/common';
import { Ctx, MessagePattern, Payload } from '@nestjs/microservices';
import type { TrainTask } from '../../libs/protocol/src/index.js';
import { ROLE } from '../common/http.js';
import { TASK_EVALUATE, TASK_TRAIN, WorkQueueContext } from '../common/jetstream-transport.js';
import type { ClientTrainer } from './trainer.js';

@Controller()
export class TrainerController {
  constructor(@Inject(ROLE) private readonly trainer: ClientTrainer) {}

  /** K local steps of the task's client from the round's broadcast; uploads and publishes the update. */
  @MessagePattern(TASK_TRAIN)
  train(@Payload() task: TrainTask, @Ctx() ctx: WorkQueueContext): Promise<void> {
    return this.trainer.train(task, ctx.task);
  }

  /** Private evaluation: AdapEmu on the client's own test set; publishes the numbers only. */
  @MessagePattern(TASK_EVALUATE)
  evaluate(@Payload() task: TrainTask): Promise<void> {
    return this.trainer.evaluate(task);
  }
}

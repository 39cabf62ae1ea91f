/**
 * The evaluator's handler of the evaluation request, on Nest's built-in NATS transport. The subject carries the job
 * id and the round (`fl.<job>.round.<r>.evaluate`), so the controller is made per job with the round as a wildcard;
 * the concrete subject (the round) comes from the NATS context.
 */
import { Controller, Inject, type Type } from '@nestjs/common';
import { Ctx, MessagePattern, NatsContext, Payload } from '@nestjs/microservices';
import { ROLE } from '../common/http.js';
import { evaluatePattern, type EvalReply } from '../common/evaluation-wire.js';
import type { Evaluator } from './evaluator.js';

export function evaluatorController(jobId: string): Type {
  @Controller()
  class EvaluatorController {
    constructor(@Inject(ROLE) private readonly evaluator: Evaluator) {}

    /** Scores the request's adapter and emulator (AdapEmu / AdapFu / base) and replies with the rows. */
    @MessagePattern(evaluatePattern(jobId), { queue: 'evaluator' })
    evaluate(@Payload() request: unknown, @Ctx() ctx: NatsContext): Promise<EvalReply> {
      return this.evaluator.answer(request, ctx.getSubject());
    }
  }
  return EvaluatorController;
}

/**
 * server-alignment's handler of the alignment call, on Nest's built-in NATS transport. The subject carries the job
 * id (`fl.<job>.align`, libs/protocol subjects), so the controller is made per job: decorators take the pattern when
 * the class is defined.
 */
import { Controller, Inject, type Type } from '@nestjs/common';
import { MessagePattern, Payload } from '@nestjs/microservices';
import { ROLE } from '../common/http.js';
import { alignSubject, type AlignReply } from '../../libs/protocol/src/index.js';
import type { ServerAlignment } from './alignment.js';

export function alignmentController(jobId: string): Type {
  @Controller()
  class AlignmentController {
    constructor(@Inject(ROLE) private readonly server: ServerAlignment) {}

    /** E alignment steps of the emulator against the request's adapter; replies with the new emulator's blob ref. */
    @MessagePattern(alignSubject(jobId), { queue: 'server-alignment' })
    align(@Payload() request: unknown): Promise<AlignReply> {
      return this.server.answer(request);
    }
  }
  return AlignmentController;
}

/**
 * The aggregator's message handlers: every ClientUpdate (`fl.<job>.round.<r>.update.<client>`) and, in private
 * evaluation, every ClientMetrics (`fl.<job>.round.<r>.metrics.<client>`) arrive here as core NATS events
 * (NatsEventServer, services/common/nats-event-transport.ts: the raw bytes and the subject) and go to the
 * AggregatorInbox, which hands them to the round's collection (libs/protocol: validation, planned clients, dedupe,
 * quorum, deadline, late updates) or metrics listener, or counts them as stale. Wiring only: the subjects carry the
 * job id, so the controller is made per job, with the round and client as wildcards.
 */
import { Controller, Inject, type Type } from '@nestjs/common';
import { Ctx, EventPattern, NatsContext, Payload } from '@nestjs/microservices';
import { assertJobId } from '../../libs/protocol/src/index.js';
import { AggregatorInbox } from './aggregator-inbox.js';

/** Every round's update subjects of a job. */
export function updatesPattern(jobId: string): `fl.${string}.round.*.update.*` {
  return `fl.${assertJobId(jobId)}.round.*.update.*`;
}

/** Every round's client metrics subjects of a job. */
export function metricsPattern(jobId: string): `fl.${string}.round.*.metrics.*` {
  return `fl.${assertJobId(jobId)}.round.*.metrics.*`;
}

export function aggregatorController(jobId: string): Type {
  @Controller()
  class AggregatorController {
    constructor(@Inject(AggregatorInbox) readonly inbox: AggregatorInbox) {}

    /** A trainer's ClientUpdate (or anything else published on an update subject). */
    @EventPattern<string>(updatesPattern(jobId))
    update(@Payload() data: Uint8Array, @Ctx() ctx: NatsContext): void {
      this.inbox.update(ctx.getSubject(), data);
    }

    /** A trainer's ClientMetrics of an evaluate task (private evaluation). */
    @EventPattern<string>(metricsPattern(jobId))
    metrics(@Payload() data: Uint8Array, @Ctx() ctx: NatsContext): void {
      this.inbox.clientMetrics(ctx.getSubject(), data);
    }
  }
  return AggregatorController;
}

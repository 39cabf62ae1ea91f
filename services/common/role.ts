/** What every service exposes to the shared Nest shell: lifecycle, readiness, metrics, handlers and transports. */
import type { Type } from '@nestjs/common';
import type { CustomTransportStrategy } from '@nestjs/microservices';
import type { JsonLogger } from './logger.js';
import type { ServiceMetrics } from './metrics.js';

export interface ServiceRole {
  readonly name: string;
  readonly log: JsonLogger;
  readonly metrics: ServiceMetrics;
  /** True once connected to NATS and the model / job state is loaded. */
  ready(): boolean;
  /** Connects and starts serving; resolves when ready. */
  start(): Promise<void>;
  /** Stops taking work, finishes the work in progress, disconnects. Idempotent. */
  stop(): Promise<void>;
  /** Nest controllers with this service's message handlers (@MessagePattern / @EventPattern); the role is ROLE. */
  readonly controllers?: readonly Type[];
  /** Transport strategies connected as Nest microservices; started after start() resolved. */
  readonly transports?: readonly CustomTransportStrategy[];
}

/** What every service exposes to the shared HTTP shell: lifecycle, readiness and metrics. */
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
}

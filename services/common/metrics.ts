/** Prometheus metrics of one service (own registry, so several services can share a process in tests). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BlobStats } from '../../libs/protocol/src/index.js';

export class ServiceMetrics {
  readonly registry = new Registry();
  /** Last round this service worked on (0-based; the aggregator: rounds completed). */
  readonly round: Gauge;
  /** Seconds per training / alignment step. */
  readonly stepSeconds: Histogram;
  readonly tokensPerSecond: Gauge;
  readonly rejectedUpdates: Counter<'reason'>;
  /** Blob bytes downloaded / uploaded (read from the tracked BlobStore at scrape time). */
  readonly bytesIn: Gauge;
  readonly bytesOut: Gauge;
  #blobStats: () => BlobStats | undefined = () => undefined;

  constructor(service: string, opts: { defaultMetrics?: boolean } = {}) {
    this.registry.setDefaultLabels({ service });
    const registers = [this.registry];
    this.round = new Gauge({
      name: 'fl_round',
      help: 'Current round (0-based) or rounds completed (aggregator)',
      registers,
    });
    this.stepSeconds = new Histogram({
      name: 'fl_step_seconds',
      help: 'Wall time of one training or alignment step',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.tokensPerSecond = new Gauge({
      name: 'fl_tokens_per_second',
      help: 'Loss-bearing tokens per second of the last local training',
      registers,
    });
    this.rejectedUpdates = new Counter({
      name: 'fl_rejected_updates_total',
      help: 'Client updates rejected (malformed, impersonating, failed checks)',
      labelNames: ['reason'],
      registers,
    });
    const stats = (): BlobStats | undefined => this.#blobStats();
    this.bytesIn = new Gauge({
      name: 'fl_bytes_in_total',
      help: 'Blob bytes downloaded from the object store',
      registers,
      collect() {
        this.set(stats()?.bytesDown ?? 0);
      },
    });
    this.bytesOut = new Gauge({
      name: 'fl_bytes_out_total',
      help: 'Blob bytes uploaded to the object store',
      registers,
      collect() {
        this.set(stats()?.bytesUp ?? 0);
      },
    });
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** Where the bytes in/out gauges read from (the service's BlobStore). */
  trackBlobs(stats: () => BlobStats | undefined): void {
    this.#blobStats = stats;
  }
}

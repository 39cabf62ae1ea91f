/**
 * Prometheus metrics of one service (own registry, so several services can share a process in tests). Names follow
 * the Prometheus conventions: counters end in `_total` (with the unit before it), durations are histograms in
 * seconds, rates are left to PromQL (`rate(fl_trained_tokens_total[5m])`), never stored in a gauge.
 *
 * `fl_round` means the same in every service: the 0-based index of the latest federated round this service worked
 * on (aggregator: the round it planned; trainer: the round it trained; server-alignment: the round after which it
 * aligned; evaluator: the round whose result it evaluated). Rounds completed are the aggregator's
 * `fl_rounds_completed`.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BlobStats } from '../../libs/protocol/src/index.js';

export class ServiceMetrics {
  readonly registry = new Registry();
  /** 0-based index of the latest round this service worked on (see the module comment). */
  readonly round: Gauge;
  /** Seconds per training / alignment step. */
  readonly stepSeconds: Histogram;
  /** Loss-bearing tokens trained on (trainers). */
  readonly trainedTokens: Counter;
  readonly rejectedUpdates: Counter<'reason'>;
  /** Blob bytes downloaded / uploaded (read from the tracked BlobStore at scrape time). */
  readonly blobDownloadBytes: Counter;
  readonly blobUploadBytes: Counter;
  #blobStats: () => BlobStats | undefined = () => undefined;

  constructor(service: string, opts: { defaultMetrics?: boolean } = {}) {
    this.registry.setDefaultLabels({ service });
    const registers = [this.registry];
    this.round = new Gauge({
      name: 'fl_round',
      help: '0-based index of the latest federated round this service worked on',
      registers,
    });
    this.stepSeconds = new Histogram({
      name: 'fl_step_seconds',
      help: 'Wall time of one training or alignment step',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.trainedTokens = new Counter({
      name: 'fl_trained_tokens_total',
      help: 'Loss-bearing tokens of local training (rate() gives tokens per second)',
      registers,
    });
    this.rejectedUpdates = new Counter({
      name: 'fl_rejected_updates_total',
      help: 'Client updates rejected (malformed, impersonating, failed checks)',
      labelNames: ['reason'],
      registers,
    });
    const stats = (): BlobStats | undefined => this.#blobStats();
    // The BlobStore counts monotonically; at scrape time the counter takes its value (reset + inc, since a
    // prom-client counter has no set).
    const fromStats = (name: string, help: string, read: (s: BlobStats) => number): Counter =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          const s = stats();
          this.reset();
          if (s) this.inc(read(s));
        },
      });
    this.blobDownloadBytes = fromStats(
      'fl_blob_download_bytes_total',
      'Blob bytes downloaded from the object store',
      (s) => s.bytesDown,
    );
    this.blobUploadBytes = fromStats(
      'fl_blob_upload_bytes_total',
      'Blob bytes uploaded to the object store',
      (s) => s.bytesUp,
    );
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** Where the blob byte counters read from (the service's BlobStore). */
  trackBlobs(stats: () => BlobStats | undefined): void {
    this.#blobStats = stats;
  }
}

/**
 * Core NATS events as a NestJS transport strategy, on the service's own (injected) connection: a controller declares
 * `@EventPattern('fl.<job>.round.*.update.*')` and this server subscribes to that subject pattern and hands every
 * message to the handler, with the raw bytes as payload (the handler's callee validates them: libs/protocol
 * decodeMessage) and a NatsContext carrying the concrete subject.
 *
 * Why not Nest's ServerNats: it opens a second connection (the aggregator's identity would need a second set of
 * permissions and inbox prefix for it), it parses the body as JSON into its `{pattern, data}` envelope before the
 * protocol's own size and schema checks see the bytes, and it gives no way to know when the subscriptions are live
 * on the server. Here `listening` resolves once they are (after a flush), so a round's collection opened after it
 * cannot miss a fast client's update, as with the collector's own subscription (libs/protocol collector.ts).
 *
 * Messages of one subscription reach the handler one at a time, in arrival order (a handler's promise settles before
 * the next message is handed over), so "first update kept" means the first one published. Subscriptions are
 * re-established by the client after a reconnect.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { NatsContext, Server, type CustomTransportStrategy } from '@nestjs/microservices';
import type { JsonLogger } from './logger.js';

export class NatsEventServer extends Server implements CustomTransportStrategy {
  readonly #subs: Subscription[] = [];
  /** Per subscription: the promise of its latest message's handling. */
  readonly #chains: (() => Promise<void>)[] = [];
  #listeningResolve: () => void = () => {};
  #listeningReject: (e: Error) => void = () => {};
  /** Resolves once every handler's subscription is live on the server; rejects if closed (or failed) before that. */
  readonly listening = new Promise<void>((resolve, reject) => {
    this.#listeningResolve = resolve;
    this.#listeningReject = reject;
  });
  #closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly log: JsonLogger,
  ) {
    super();
    // Awaited by whoever needs the handlers live; a close before listening is no failure of its own.
    this.listening.catch(() => {});
  }

  listen(callback: (err?: unknown) => void): void {
    this.#subscribe().then(
      () => {
        this.#listeningResolve();
        callback();
      },
      (e: unknown) => {
        this.#listeningReject(new Error(`NatsEventServer: subscribing failed: ${String(e)}`));
        callback(e);
      },
    );
  }

  async #subscribe(): Promise<void> {
    for (const [pattern, handler] of this.getHandlers()) {
      // Core NATS events carry no reply subject here: a request/reply handler belongs on ServerNats.
      if (!handler.isEventHandler)
        throw new Error(`NatsEventServer: ${pattern} is a @MessagePattern; only @EventPattern handlers are served`);
      // One chain per subscription: each message is handed over once the previous one's handler settled.
      let chain = Promise.resolve();
      this.#chains.push(() => chain);
      const handle = (subject: string, data: Uint8Array, ctx: NatsContext): void => {
        chain = chain
          .then(() => this.handleEvent(pattern, { pattern, data }, ctx))
          .catch((e: unknown) => this.log.write('error', 'event handler failed', { subject, error: String(e) }));
      };
      this.#subs.push(
        this.nc.subscribe(pattern, {
          callback: (err, msg) => {
            if (err !== null) return this.log.warn(`subscription ${pattern}: ${err.message}`);
            handle(msg.subject, msg.data, new NatsContext([msg.subject, msg.headers]));
          },
        }),
      );
    }
    await this.nc.flush();
  }

  /** Unsubscribes and waits for the handlers in progress; the connection stays open (it is the module's). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeningReject(new Error('NatsEventServer: closed before it listened'));
    for (const sub of this.#subs) if (!sub.isClosed()) sub.unsubscribe();
    await Promise.all(this.#chains.map((c) => c()));
  }

  on(): never {
    throw new Error("NatsEventServer: no transport events to listen to (the connection is the service's)");
  }

  unwrap<T>(): T {
    return this.nc as T;
  }
}

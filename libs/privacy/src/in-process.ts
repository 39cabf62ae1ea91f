/**
 * Runs one secure aggregation with every party in this process (the standalone job, tests, the bench). Every
 * message crosses a JSON serialisation boundary, as it would on NATS: the server object only ever receives what a
 * client put on the wire (keys, AES-GCM ciphertexts, masked vectors, revealed shares), never a client's input.
 */
import { SecAggClient, SecAggServer, type SecAggConfig, type SecAggInput, type SecAggResult } from './secagg.js';
import type { Rejection } from './errors.js';

export interface InProcessOptions {
  /** Clients that send keys and shares, then vanish before their masked input: excluded from the sum. */
  readonly dropBeforeMasking?: readonly string[];
  /** Clients that send their masked input, then vanish before unmasking: still in the sum (Shamir recovers b). */
  readonly dropAfterMasking?: readonly string[];
  /** Replaces node:crypto randomBytes inside each client (tests only). */
  readonly random?: (clientId: string) => (n: number) => Buffer;
}

export interface InProcessResult extends SecAggResult {
  /** Bytes of JSON clients sent to the server / the server sent to clients, over the four rounds. */
  readonly bytesUp: number;
  readonly bytesDown: number;
  /** Elements clamped to the clip range, over all clients (nonzero means clipRange is too small). */
  readonly clamped: number;
  readonly rejected: readonly Rejection[];
}

/**
 * `inputs` holds each configured client's input (a client missing from it never advertises keys: dropped before
 * round 0). Throws SecAggError when fewer than `threshold` clients remain at a round or a secret cannot be
 * reconstructed (more than holders - t dropouts), naming what was missing.
 */
export function secureAggregateInProcess(
  cfg: SecAggConfig,
  inputs: ReadonlyMap<string, SecAggInput>,
  opts: InProcessOptions = {},
): InProcessResult {
  let bytesUp = 0;
  let bytesDown = 0;
  // The wire: what the receiver gets is a parse of the JSON text, counted in bytes.
  const up = (m: unknown): unknown => {
    const s = JSON.stringify(m);
    bytesUp += Buffer.byteLength(s);
    return JSON.parse(s) as unknown;
  };
  const down = (m: unknown): unknown => {
    const s = JSON.stringify(m);
    bytesDown += Buffer.byteLength(s);
    return JSON.parse(s) as unknown;
  };
  const before = new Set(opts.dropBeforeMasking ?? []);
  const after = new Set(opts.dropAfterMasking ?? []);
  const clients = cfg.clients
    .filter((id) => inputs.has(id))
    .map((id) => new SecAggClient(id, cfg, opts.random ? { random: opts.random(id) } : {}));
  const server = new SecAggServer(cfg);
  const keys = server.advertise(clients.map((c) => up(c.advertise())));
  const forwards = server.shareKeys(clients.map((c) => up(c.shareKeys(down(keys)))));
  const masking = clients.filter((c) => forwards.has(c.id) && !before.has(c.id));
  const request = server.maskedInputs(
    masking.map((c) => up(c.maskedInput(down(forwards.get(c.id)), inputs.get(c.id)!))),
  );
  const answering = masking.filter((c) => !after.has(c.id));
  const result = server.unmask(answering.map((c) => up(c.unmask(down(request)))));
  // Broadcasts go to every client once: count the keys broadcast and the unmask request per recipient.
  return {
    ...result,
    bytesUp,
    bytesDown,
    clamped: masking.reduce((s, c) => s + c.clamped, 0),
    rejected: server.rejected,
  };
}

/**
 * The secure-aggregation messages, as zod schemas of plain JSON (bytes as base64), so they can travel over NATS.
 * Direction and round (Bonawitz et al. 2017 numbering; no consistency-check round, see README):
 *   round 0  client -> server  AdvertiseKeys       server -> all      KeysBroadcast
 *   round 1  client -> server  ShareKeys           server -> each v   SharesForward (only ciphertexts addressed to v)
 *   round 2  client -> server  MaskedInput         server -> all      UnmaskRequest (the survivors U3)
 *   round 3  client -> server  Unmask              server: sum
 */
import { z } from 'zod';

const b64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, 'not base64');
const clientId = z.string().min(1).max(128);
const roundId = z.string().min(1).max(256);

export const AdvertiseKeysSchema = z.strictObject({
  type: z.literal('secagg.advertise'),
  roundId,
  sender: clientId,
  /** X25519 public key for share encryption (32 bytes). */
  cPk: b64,
  /** X25519 public key for pairwise masks (32 bytes). */
  sPk: b64,
});
export type AdvertiseKeys = z.infer<typeof AdvertiseKeysSchema>;

export const KeysBroadcastSchema = z.strictObject({
  type: z.literal('secagg.keys'),
  roundId,
  keys: z.array(z.strictObject({ id: clientId, cPk: b64, sPk: b64 })),
});
export type KeysBroadcast = z.infer<typeof KeysBroadcastSchema>;

export const ShareKeysSchema = z.strictObject({
  type: z.literal('secagg.share-keys'),
  roundId,
  sender: clientId,
  /** SHA-256("secagg/v1 b|roundId|sender|" || b): lets the server verify the reconstructed self-mask seed. */
  bCommit: b64,
  /** One AES-GCM ciphertext per share holder (neighbours that advertised keys), holding the s-key and b shares. */
  shares: z.array(z.strictObject({ to: clientId, nonce: b64, ct: b64 })),
});
export type ShareKeys = z.infer<typeof ShareKeysSchema>;

export const SharesForwardSchema = z.strictObject({
  type: z.literal('secagg.shares'),
  roundId,
  to: clientId,
  /** U2: every client whose ShareKeys the server accepted; pairwise masks are taken with these neighbours. */
  participants: z.array(clientId),
  shares: z.array(z.strictObject({ from: clientId, nonce: b64, ct: b64 })),
});
export type SharesForward = z.infer<typeof SharesForwardSchema>;

export const MaskedInputSchema = z.strictObject({
  type: z.literal('secagg.masked'),
  roundId,
  sender: clientId,
  /**
   * (vectorLength + 1 + statsLength) Z_{2^64} elements, 8 bytes each (lo, hi little-endian uint32): values, the
   * weight, then the stats.
   */
  masked: b64,
});
export type MaskedInput = z.infer<typeof MaskedInputSchema>;

export const UnmaskRequestSchema = z.strictObject({
  type: z.literal('secagg.unmask-request'),
  roundId,
  /** U3: clients whose masked input is in the sum. Everyone else in U2 is treated as dropped. */
  survivors: z.array(clientId),
});
export type UnmaskRequest = z.infer<typeof UnmaskRequestSchema>;

const revealed = z.array(z.strictObject({ of: clientId, share: b64 }));
export const UnmaskSchema = z.strictObject({
  type: z.literal('secagg.unmask'),
  roundId,
  sender: clientId,
  /** Shares of the self-mask seed b of survivors (66 bytes each). */
  bShares: revealed,
  /** Shares of the mask private key s_sk of dropped clients (66 bytes each). */
  sShares: revealed,
});
export type Unmask = z.infer<typeof UnmaskSchema>;

export const toB64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
export const fromB64 = (s: string): Buffer => Buffer.from(s, 'base64');

/** Parses with a schema; returns the value or a one-line reason naming the field paths. */
export function parseMessage<T>(
  schema: z.ZodType<T>,
  msg: unknown,
): { ok: true; value: T } | { ok: false; reason: string } {
  const r = schema.safeParse(msg);
  if (r.success) return { ok: true, value: r.data };
  return {
    ok: false,
    reason: `malformed: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
  };
}

/**
 * Shamir secret sharing over the prime field GF(p), p = 2^521 - 1 (a Mersenne prime), with BigInt. One field
 * element holds a whole 32-byte secret (an X25519 private key or a mask seed); shares are 66-byte big-endian.
 * Holder x-coordinates are 1..n (the client's position in the sorted client list plus one), never 0.
 */
import { randomBytes } from 'node:crypto';

export const P = (1n << 521n) - 1n;
export const SHARE_BYTES = 66;

export interface Share {
  /** x-coordinate, >= 1. */
  readonly x: number;
  readonly y: bigint;
}

function mod(a: bigint): bigint {
  const r = a % P;
  return r < 0n ? r + P : r;
}

function randomField(random: (n: number) => Buffer): bigint {
  for (;;) {
    const b = random(SHARE_BYTES);
    b[0]! &= 0x01; // 521 bits
    const v = bytesToBig(b);
    if (v < P) return v;
  }
}

export function bytesToBig(b: Uint8Array): bigint {
  let v = 0n;
  for (const byte of b) v = (v << 8n) | BigInt(byte);
  return v;
}

export function bigToBytes(v: bigint, len: number): Buffer {
  const out = Buffer.alloc(len);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  if (v !== 0n) throw new RangeError(`value does not fit in ${len} bytes`);
  return out;
}

/** Splits `secret` (at most 65 bytes) into shares for x = each of `xs`, any `threshold` of which recover it. */
export function split(
  secret: Uint8Array,
  xs: readonly number[],
  threshold: number,
  random: (n: number) => Buffer = randomBytes,
): Share[] {
  if (threshold < 1 || threshold > xs.length)
    throw new RangeError(`threshold ${threshold} must be in [1, ${xs.length}] (number of holders)`);
  const coeffs = [bytesToBig(secret)];
  for (let i = 1; i < threshold; i++) coeffs.push(randomField(random));
  return xs.map((x) => {
    const xb = BigInt(x);
    let y = 0n;
    for (let i = coeffs.length - 1; i >= 0; i--) y = mod(y * xb + coeffs[i]!);
    return { x, y };
  });
}

function inv(a: bigint): bigint {
  // Extended Euclid.
  let [r0, r1] = [mod(a), P];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  if (r0 !== 1n) throw new RangeError('not invertible');
  return mod(s0);
}

/** Lagrange interpolation at 0 of exactly the given shares (distinct x). */
export function combine(shares: readonly Share[]): bigint {
  const xs = shares.map((s) => BigInt(s.x));
  if (new Set(xs).size !== xs.length) throw new RangeError('duplicate share x-coordinates');
  let acc = 0n;
  for (let i = 0; i < shares.length; i++) {
    let num = 1n;
    let den = 1n;
    for (let j = 0; j < shares.length; j++) {
      if (i === j) continue;
      num = mod(num * xs[j]!);
      den = mod(den * (xs[j]! - xs[i]!));
    }
    acc = mod(acc + shares[i]!.y * num * inv(den));
  }
  return acc;
}

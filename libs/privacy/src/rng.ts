/**
 * Random sources for DP noise. cryptoRng() for real runs (node:crypto randomness); seededRng(seed) is an
 * AES-256-CTR keystream under SHA-256(seed), deterministic for tests and reproducible experiments only.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';

export interface Rng {
  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number;
}

class StreamRng implements Rng {
  private buf: Buffer = Buffer.alloc(0);
  private off = 0;
  constructor(private readonly fill: (n: number) => Buffer) {}
  uniform(): number {
    if (this.off + 8 > this.buf.length) {
      this.buf = this.fill(8192);
      this.off = 0;
    }
    const hi = this.buf.readUInt32LE(this.off) >>> 5; // 27 bits
    const lo = this.buf.readUInt32LE(this.off + 4) >>> 6; // 26 bits
    this.off += 8;
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

export function cryptoRng(): Rng {
  return new StreamRng((n) => randomBytes(n));
}

export function seededRng(seed: string | Uint8Array): Rng {
  const key = createHash('sha256').update(seed).digest();
  const c = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return new StreamRng((n) => c.update(Buffer.alloc(n)));
}

/** Standard normal by Box-Muller (both outputs used). */
export function gaussianSource(rng: Rng): () => number {
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const s = spare;
      spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = rng.uniform();
    const v = rng.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

/** Deterministic byte source (AES-256-CTR keystream under SHA-256(seed)) for reproducible tests and benches. */
import { createCipheriv, createHash } from 'node:crypto';

export function seededBytes(seed: string): (n: number) => Buffer {
  const c = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  return (n) => c.update(Buffer.alloc(n));
}

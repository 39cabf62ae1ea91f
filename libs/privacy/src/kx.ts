/**
 * Key agreement, key derivation, share encryption and mask expansion for secure aggregation, on node:crypto only.
 *  - X25519 key pairs; a 32-byte private key is the raw scalar (PKCS#8 DER = fixed prefix + 32 bytes).
 *  - Share encryption: AES-256-GCM under HKDF-SHA256(X25519(c_u, c_v), salt = roundId, info = "secagg/v1 share"),
 *    associated data "secagg/v1|<roundId>|<from>|<to>", 12-byte random nonce, 16-byte tag appended.
 *  - Masks: AES-256-CTR keystream (zero IV) under HKDF-SHA256(seed, salt = roundId, info = "secagg/v1 mask"),
 *    read as little-endian uint32 words: 2 words per Z_{2^64} element.
 */
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';

const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

export interface RawKeyPair {
  readonly sk: Buffer; // 32 bytes
  readonly pk: Buffer; // 32 bytes
}

/** A fresh X25519 key pair; with `random`, the 32-byte private key comes from it (deterministic tests). */
export function generateX25519(random?: (n: number) => Buffer): RawKeyPair {
  if (random !== undefined) {
    const sk = random(32);
    return { sk, pk: publicOf(sk) };
  }
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const sk = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(PKCS8_PREFIX.length);
  const pk = publicKey.export({ format: 'der', type: 'spki' }).subarray(SPKI_PREFIX.length);
  return { sk: Buffer.from(sk), pk: Buffer.from(pk) };
}

function privKey(sk: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, sk]), format: 'der', type: 'pkcs8' });
}

function pubKey(pk: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, pk]), format: 'der', type: 'spki' });
}

/** The public key of a raw 32-byte X25519 private key. */
export function publicOf(sk: Uint8Array): Buffer {
  const pub = createPublicKey(privKey(sk)).export({ format: 'der', type: 'spki' });
  return Buffer.from(pub.subarray(SPKI_PREFIX.length));
}

/** X25519(sk, pk): 32 bytes. Throws on a low-order public key (all-zero output). */
export function agree(sk: Uint8Array, pk: Uint8Array): Buffer {
  return diffieHellman({ privateKey: privKey(sk), publicKey: pubKey(pk) });
}

export function hkdf32(ikm: Uint8Array, salt: string, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, Buffer.from(salt, 'utf8'), Buffer.from(info, 'utf8'), 32));
}

export function shareAad(roundId: string, from: string, to: string): Buffer {
  return Buffer.from(`secagg/v1|${roundId}|${from}|${to}`, 'utf8');
}

/** AES-256-GCM; returns nonce (12) and ciphertext || tag. */
export function seal(
  key: Buffer,
  plaintext: Buffer,
  aad: Buffer,
  random: (n: number) => Buffer = randomBytes,
): { nonce: Buffer; ct: Buffer } {
  const nonce = random(12);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  return { nonce, ct };
}

/** Opens a sealed share; null when authentication fails. */
export function open(key: Buffer, nonce: Buffer, ct: Buffer, aad: Buffer): Buffer | null {
  if (nonce.length !== 12 || ct.length < 16) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(aad);
    d.setAuthTag(ct.subarray(ct.length - 16));
    return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
  } catch {
    return null;
  }
}

/** PRG(seed): `elements` pseudo-random Z_{2^64} elements as 2*elements uint32 words (AES-256-CTR keystream). */
export function expandMask(seed: Uint8Array, roundId: string, elements: number): Uint32Array {
  const key = hkdf32(seed, roundId, 'secagg/v1 mask');
  const c = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(elements * 8);
  const out = c.update(zeros);
  c.final();
  // Little-endian platforms only (x86, arm64): Uint32Array reads native order.
  return new Uint32Array(out.buffer, out.byteOffset, elements * 2).slice();
}

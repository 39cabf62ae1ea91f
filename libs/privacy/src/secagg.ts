/**
 * Secure aggregation (Bonawitz et al. 2017, semi-honest variant; SecAgg+ sparse graph of Bell et al. 2020 as an
 * option) as transport-agnostic round functions. SecAggClient and SecAggServer exchange the JSON messages of
 * messages.ts; the server learns sum_i w_i x_i and sum_i w_i over the survivors and nothing about any single x_i.
 */
import { createHash, randomBytes } from 'node:crypto';
import { MessageRejectedError, SecAggError, type Rejection } from './errors.js';
import { addInto, decodeSum, encodeWeighted, errorBound, makeEncoding, subInto, type Encoding } from './fixed-point.js';
import { neighbours, type GraphConfig } from './graph.js';
import { agree, expandMask, generateX25519, hkdf32, open, publicOf, seal, shareAad, type RawKeyPair } from './kx.js';
import {
  AdvertiseKeysSchema,
  KeysBroadcastSchema,
  MaskedInputSchema,
  ShareKeysSchema,
  SharesForwardSchema,
  UnmaskRequestSchema,
  UnmaskSchema,
  fromB64,
  parseMessage,
  toB64,
  type AdvertiseKeys,
  type KeysBroadcast,
  type MaskedInput,
  type ShareKeys,
  type SharesForward,
  type Unmask,
  type UnmaskRequest,
} from './messages.js';
import { P, SHARE_BYTES, bigToBytes, bytesToBig, combine, split, type Share } from './shamir.js';

/** The public parameters of one aggregation; server and every client must hold the same. */
export interface SecAggConfig {
  /** Binds keys, ciphertexts and masks to this aggregation (e.g. `${jobId}/${round}`); never reuse. */
  readonly roundId: string;
  /** All clients that may take part. The position in this list + 1 is a client's Shamir x-coordinate. */
  readonly clients: readonly string[];
  /** Shamir threshold t: shares needed to reconstruct a secret; up to (holders - t) holders may drop. */
  readonly threshold: number;
  /** Length L of the flat update vector. */
  readonly vectorLength: number;
  /** Elements of (w / maxWeight) * x are clamped to [-clipRange, clipRange]. */
  readonly clipRange: number;
  /** Largest per-client weight (training tokens); weights are integers in [0, maxWeight]. */
  readonly maxWeight: number;
  /** 'complete' (default, full SecAgg) or SecAgg+ { kind: 'harary', k, seed }. */
  readonly graph?: GraphConfig;
  /**
   * S: how many unweighted integer stats each client appends to its input (SecAggInput.stats), summed exactly
   * like the weight; the server learns only their sums over the survivors. Default 0.
   */
  readonly statsLength?: number;
}

interface Setup {
  readonly cfg: SecAggConfig;
  readonly enc: Encoding;
  readonly index: Map<string, number>;
  readonly nbrs: Map<string, Set<string>>;
}

function setup(cfg: SecAggConfig): Setup {
  const n = cfg.clients.length;
  if (n < 2) throw new RangeError('secure aggregation needs at least 2 clients');
  if (new Set(cfg.clients).size !== n) throw new RangeError('duplicate client ids');
  if (!Number.isInteger(cfg.vectorLength) || cfg.vectorLength < 1) throw new RangeError('vectorLength must be >= 1');
  if (!Number.isInteger(cfg.statsLength ?? 0) || (cfg.statsLength ?? 0) < 0)
    throw new RangeError(`statsLength must be an integer >= 0, got ${cfg.statsLength}`);
  const graph = cfg.graph ?? { kind: 'complete' };
  const holders = graph.kind === 'complete' ? n : graph.k + 1;
  if (!Number.isInteger(cfg.threshold) || cfg.threshold < 1 || cfg.threshold > holders)
    throw new RangeError(
      `threshold must be an integer in [1, ${holders}] (share holders per client), got ${cfg.threshold}`,
    );
  const enc = makeEncoding({ clipRange: cfg.clipRange, maxClients: n, maxWeight: cfg.maxWeight });
  const index = new Map(cfg.clients.map((c, i) => [c, i + 1]));
  return { cfg, enc, index, nbrs: neighbours(cfg.clients, cfg.roundId, graph) };
}

const SHARE_PLAINTEXT = 2 * SHARE_BYTES;

function bCommitment(roundId: string, id: string, b: Uint8Array): Buffer {
  return createHash('sha256').update(`secagg/v1 b|${roundId}|${id}|`).update(b).digest();
}

function shareKey(cSk: Uint8Array, cPkOther: Uint8Array, roundId: string): Buffer {
  return hkdf32(agree(cSk, cPkOther), roundId, 'secagg/v1 share');
}

/** Worst-case absolute error per element of sum() (and of mean() times the weight sum), for this config. */
export function secAggErrorBound(cfg: SecAggConfig): number {
  return errorBound(
    makeEncoding({ clipRange: cfg.clipRange, maxClients: cfg.clients.length, maxWeight: cfg.maxWeight }),
  );
}

/** What a client puts in: its update (or delta), its weight, and optional noise on the (w / maxWeight) scale. */
export interface SecAggInput {
  readonly values: ArrayLike<number>;
  readonly weight: number;
  /** Added to (w / maxWeight) * values before encoding (distributed DP noise); length vectorLength. */
  readonly noise?: ArrayLike<number>;
  /** SecAggConfig.statsLength integers in [0, statBound] (not weighted): the server learns only their sums. */
  readonly stats?: readonly number[];
}

/** Ring elements of one masked input: the values, the weight and the stats. */
export const maskedLength = (cfg: Pick<SecAggConfig, 'vectorLength' | 'statsLength'>): number =>
  cfg.vectorLength + 1 + (cfg.statsLength ?? 0);

/** One client's side of the protocol. Call the methods in order, once each. */
export class SecAggClient {
  private readonly s: Setup;
  private readonly random: (n: number) => Buffer;
  private readonly c: RawKeyPair;
  private readonly sk: RawKeyPair;
  private readonly b: Buffer;
  private keys = new Map<string, { cPk: Buffer; sPk: Buffer }>();
  private u2 = new Set<string>();
  /** Shares this client holds: of whom -> (s share, b share). Includes its own. */
  private held = new Map<string, { s: bigint; b: bigint }>();
  /** Elements clamped by the encoder in maskedInput (nonzero means clipRange was too small). */
  clamped = 0;
  private stage = 0;

  /** `opts.random` replaces node:crypto randomBytes for keys, seeds, Shamir coefficients and nonces (tests only). */
  constructor(
    readonly id: string,
    cfg: SecAggConfig,
    opts: { random?: (n: number) => Buffer } = {},
  ) {
    this.s = setup(cfg);
    if (!this.s.index.has(id)) throw new RangeError(`client ${id} is not in the configured client list`);
    this.random = opts.random ?? randomBytes;
    this.c = generateX25519(opts.random);
    this.sk = generateX25519(opts.random);
    this.b = this.random(32);
  }

  private reject(round: Rejection['round'], reason: string, clientId?: string): never {
    throw new MessageRejectedError(clientId === undefined ? { round, reason } : { round, clientId, reason });
  }

  private next(stage: number, what: string): void {
    if (this.stage !== stage)
      throw new SecAggError(`${what} called out of order (client ${this.id} is at step ${this.stage})`);
    this.stage++;
  }

  /** Round 0: the two public keys. */
  advertise(): AdvertiseKeys {
    this.next(0, 'advertise');
    return {
      type: 'secagg.advertise',
      roundId: this.s.cfg.roundId,
      sender: this.id,
      cPk: toB64(this.c.pk),
      sPk: toB64(this.sk.pk),
    };
  }

  /** Round 1: reads everyone's keys, Shamir-shares s_sk and b among its neighbours (and itself), encrypts each share. */
  shareKeys(broadcast: unknown): ShareKeys {
    this.next(1, 'shareKeys');
    const p = parseMessage(KeysBroadcastSchema, broadcast);
    if (!p.ok) this.reject('advertise', p.reason);
    const msg: KeysBroadcast = p.value;
    const { cfg, index, nbrs } = this.s;
    if (msg.roundId !== cfg.roundId) this.reject('advertise', `round id ${msg.roundId} is not ${cfg.roundId}`);
    const seenKeys = new Set<string>();
    for (const k of msg.keys) {
      if (!index.has(k.id)) this.reject('advertise', `unknown client ${k.id}`);
      if (this.keys.has(k.id)) this.reject('advertise', `client ${k.id} listed twice`);
      const cPk = fromB64(k.cPk);
      const sPk = fromB64(k.sPk);
      if (cPk.length !== 32 || sPk.length !== 32) this.reject('advertise', `keys of ${k.id} are not 32 bytes`);
      for (const key of [k.cPk, k.sPk]) {
        if (seenKeys.has(key)) this.reject('advertise', `public key of ${k.id} repeats another key`);
        seenKeys.add(key);
      }
      this.keys.set(k.id, { cPk, sPk });
    }
    const mine = this.keys.get(this.id);
    if (mine === undefined || !mine.cPk.equals(this.c.pk) || !mine.sPk.equals(this.sk.pk))
      this.reject('advertise', `the broadcast does not carry this client's own keys`);
    if (this.keys.size < cfg.threshold)
      this.reject('advertise', `only ${this.keys.size} clients advertised keys, threshold is ${cfg.threshold}`);
    const holders = [this.id, ...[...nbrs.get(this.id)!].filter((v) => this.keys.has(v))].toSorted(
      (a, b) => index.get(a)! - index.get(b)!,
    );
    if (holders.length < cfg.threshold)
      this.reject(
        'advertise',
        `${holders.length} share holders (self + neighbours with keys) < threshold ${cfg.threshold}`,
      );
    const xs = holders.map((h) => index.get(h)!);
    const sShares = split(this.sk.sk, xs, cfg.threshold, this.random);
    const bShares = split(this.b, xs, cfg.threshold, this.random);
    const shares: ShareKeys['shares'] = [];
    holders.forEach((h, i) => {
      if (h === this.id) {
        this.held.set(h, { s: sShares[i]!.y, b: bShares[i]!.y });
        return;
      }
      const pt = Buffer.concat([bigToBytes(sShares[i]!.y, SHARE_BYTES), bigToBytes(bShares[i]!.y, SHARE_BYTES)]);
      const key = shareKey(this.c.sk, this.keys.get(h)!.cPk, cfg.roundId);
      const { nonce, ct } = seal(key, pt, shareAad(cfg.roundId, this.id, h), this.random);
      shares.push({ to: h, nonce: toB64(nonce), ct: toB64(ct) });
    });
    return {
      type: 'secagg.share-keys',
      roundId: cfg.roundId,
      sender: this.id,
      bCommit: toB64(bCommitment(cfg.roundId, this.id, this.b)),
      shares,
    };
  }

  /** Round 2: decrypts and checks the shares addressed to it, then sends its masked, encoded, weighted input. */
  maskedInput(forward: unknown, input: SecAggInput): MaskedInput {
    this.next(2, 'maskedInput');
    const p = parseMessage(SharesForwardSchema, forward);
    if (!p.ok) this.reject('share-keys', p.reason);
    const msg: SharesForward = p.value;
    const { cfg, enc, index, nbrs } = this.s;
    if (msg.roundId !== cfg.roundId) this.reject('share-keys', `round id ${msg.roundId} is not ${cfg.roundId}`);
    if (msg.to !== this.id) this.reject('share-keys', `forward addressed to ${msg.to}, not ${this.id}`);
    for (const v of msg.participants) {
      if (!this.keys.has(v)) this.reject('share-keys', `participant ${v} did not advertise keys`, v);
      if (this.u2.has(v)) this.reject('share-keys', `participant ${v} listed twice`, v);
      this.u2.add(v);
    }
    if (!this.u2.has(this.id)) this.reject('share-keys', `this client is not among the participants`);
    if (this.u2.size < cfg.threshold)
      this.reject('share-keys', `only ${this.u2.size} clients shared keys, threshold is ${cfg.threshold}`);
    const mine = nbrs.get(this.id)!;
    for (const sh of msg.shares) {
      const from = sh.from;
      if (!this.u2.has(from) || !mine.has(from))
        this.reject('share-keys', `share from ${from}, not a participating neighbour`, from);
      if (this.held.has(from)) this.reject('share-keys', `duplicate share from ${from}`, from);
      const ct = fromB64(sh.ct);
      const nonce = fromB64(sh.nonce);
      if (nonce.length !== 12) this.reject('share-keys', `nonce of ${nonce.length} bytes, expected 12`, from);
      if (ct.length !== SHARE_PLAINTEXT + 16)
        this.reject('share-keys', `ciphertext of ${ct.length} bytes, expected ${SHARE_PLAINTEXT + 16}`, from);
      const key = shareKey(this.c.sk, this.keys.get(from)!.cPk, cfg.roundId);
      const pt = open(key, nonce, ct, shareAad(cfg.roundId, from, this.id));
      if (pt === null)
        this.reject(
          'share-keys',
          `share failed AES-GCM authentication (wrong sender, recipient or round in the associated data, or tampered)`,
          from,
        );
      const s = bytesToBig(pt.subarray(0, SHARE_BYTES));
      const b = bytesToBig(pt.subarray(SHARE_BYTES));
      if (s >= P || b >= P) this.reject('share-keys', `share is not a field element`, from);
      this.held.set(from, { s, b });
    }
    for (const v of mine) {
      if (this.u2.has(v) && !this.held.has(v)) this.reject('share-keys', `participant neighbour ${v} sent no share`, v);
    }
    if (input.values.length !== cfg.vectorLength)
      throw new RangeError(`input has ${input.values.length} values, expected ${cfg.vectorLength}`);
    if (input.noise !== undefined && input.noise.length !== cfg.vectorLength)
      throw new RangeError(`noise has ${input.noise.length} values, expected ${cfg.vectorLength}`);
    const stats = input.stats ?? [];
    if (stats.length !== (cfg.statsLength ?? 0))
      throw new RangeError(`input has ${stats.length} stats, expected statsLength ${cfg.statsLength ?? 0}`);
    const { words, clamped } = encodeWeighted(enc, input.values, input.weight, input.noise, stats);
    this.clamped = clamped;
    const L1 = maskedLength(cfg);
    addInto(words, expandMask(this.b, cfg.roundId, L1));
    const me = index.get(this.id)!;
    for (const v of mine) {
      if (!this.u2.has(v)) continue;
      const m = expandMask(agree(this.sk.sk, this.keys.get(v)!.sPk), cfg.roundId, L1);
      if (index.get(v)! < me) addInto(words, m);
      else subInto(words, m);
    }
    return {
      type: 'secagg.masked',
      roundId: cfg.roundId,
      sender: this.id,
      masked: Buffer.from(words.buffer, words.byteOffset, words.byteLength).toString('base64'),
    };
  }

  /** Round 3: reveals b shares of survivors and s-key shares of dropped participants (never both for one client). */
  unmask(request: unknown): Unmask {
    this.next(3, 'unmask');
    const p = parseMessage(UnmaskRequestSchema, request);
    if (!p.ok) this.reject('masked-input', p.reason);
    const msg: UnmaskRequest = p.value;
    const cfg = this.s.cfg;
    if (msg.roundId !== cfg.roundId) this.reject('masked-input', `round id ${msg.roundId} is not ${cfg.roundId}`);
    const u3 = new Set<string>();
    for (const v of msg.survivors) {
      if (!this.u2.has(v)) this.reject('masked-input', `survivor ${v} did not share keys`, v);
      if (u3.has(v)) this.reject('masked-input', `survivor ${v} listed twice`, v);
      u3.add(v);
    }
    if (!u3.has(this.id)) this.reject('masked-input', `this client is not among the survivors; it reveals nothing`);
    if (u3.size < cfg.threshold)
      this.reject('masked-input', `only ${u3.size} survivors, threshold is ${cfg.threshold}`);
    const bShares: Unmask['bShares'] = [];
    const sShares: Unmask['sShares'] = [];
    for (const [of, sh] of this.held) {
      if (!this.u2.has(of)) continue;
      if (u3.has(of)) bShares.push({ of, share: toB64(bigToBytes(sh.b, SHARE_BYTES)) });
      else sShares.push({ of, share: toB64(bigToBytes(sh.s, SHARE_BYTES)) });
    }
    return { type: 'secagg.unmask', roundId: cfg.roundId, sender: this.id, bShares, sShares };
  }
}

/** The server's result: the survivors' weighted sum, decoded. */
export interface SecAggResult {
  /** sum_{u in survivors} w_u x_u (x clamped to the clip range), float32. */
  readonly sum: Float32Array;
  /** sum_{u in survivors} w_u, exact. */
  readonly weightSum: number;
  /** Per stat (SecAggInput.stats), its exact sum over the survivors; empty when statsLength is 0. */
  readonly stats: readonly number[];
  /** Clients whose input is in the sum. */
  readonly survivors: readonly string[];
  /** Clients that shared keys but whose masked input is not in the sum. */
  readonly dropped: readonly string[];
  /** Worst-case absolute error per element of sum (quantisation). */
  readonly errorBound: number;
}

/**
 * The server's side: one method per round, each taking every message received before that round's deadline and
 * returning what to send next. Bad messages are rejected (listed in `rejected`, with reasons) and their senders
 * treated as dropped; a round with fewer valid messages than the threshold throws SecAggError.
 */
export class SecAggServer {
  private readonly s: Setup;
  readonly rejected: Rejection[] = [];
  private keys = new Map<string, { cPk: Buffer; sPk: Buffer }>();
  private u2 = new Set<string>();
  private bCommits = new Map<string, Buffer>();
  private holdersOf = new Map<string, Set<string>>();
  private masked = new Map<string, Uint32Array>();
  private result: SecAggResult | undefined;
  private stage = 0;

  constructor(cfg: SecAggConfig) {
    this.s = setup(cfg);
  }

  get config(): SecAggConfig {
    return this.s.cfg;
  }

  private next(stage: number, what: string): void {
    if (this.stage !== stage) throw new SecAggError(`${what} called out of order (server is at step ${this.stage})`);
    this.stage++;
  }

  private accept<T extends { roundId: string; sender: string }>(
    round: Rejection['round'],
    schema: Parameters<typeof parseMessage<T>>[0],
    msgs: readonly unknown[],
    allowed: ReadonlySet<string> | ReadonlyMap<string, unknown>,
    check: (m: T) => string | undefined,
  ): T[] {
    const out = new Map<string, T>();
    const dup = new Set<string>();
    for (const raw of msgs) {
      const p = parseMessage(schema, raw);
      if (!p.ok) {
        const sender = (raw as { sender?: unknown } | null)?.sender;
        this.rejected.push(
          typeof sender === 'string' ? { round, clientId: sender, reason: p.reason } : { round, reason: p.reason },
        );
        continue;
      }
      const m = p.value;
      const bad =
        m.roundId !== this.s.cfg.roundId
          ? `round id ${m.roundId} is not ${this.s.cfg.roundId}`
          : !allowed.has(m.sender)
            ? `sender ${m.sender} is not expected in this round`
            : out.has(m.sender) || dup.has(m.sender)
              ? `duplicate message from ${m.sender}; both dropped`
              : check(m);
      if (bad !== undefined) {
        this.rejected.push({ round, clientId: m.sender, reason: bad });
        if (out.delete(m.sender)) dup.add(m.sender);
        continue;
      }
      out.set(m.sender, m);
    }
    return [...out.values()];
  }

  private needT(count: number, what: string): void {
    if (count < this.s.cfg.threshold)
      throw new SecAggError(`${what}: ${count} valid messages, threshold ${this.s.cfg.threshold} needed`);
  }

  /** Round 0: collect public keys; returns the broadcast for every client. */
  advertise(msgs: readonly unknown[]): KeysBroadcast {
    this.next(0, 'advertise');
    const seen = new Set<string>();
    const ok = this.accept<AdvertiseKeys>('advertise', AdvertiseKeysSchema, msgs, this.s.index, (m) => {
      const c = fromB64(m.cPk);
      const s = fromB64(m.sPk);
      if (c.length !== 32 || s.length !== 32) return `public keys must be 32 bytes (got ${c.length}, ${s.length})`;
      if (m.cPk === m.sPk || seen.has(m.cPk) || seen.has(m.sPk)) return 'public key repeats another key';
      seen.add(m.cPk).add(m.sPk);
      return undefined;
    });
    this.needT(ok.length, 'advertise keys');
    for (const m of ok) this.keys.set(m.sender, { cPk: fromB64(m.cPk), sPk: fromB64(m.sPk) });
    return {
      type: 'secagg.keys',
      roundId: this.s.cfg.roundId,
      keys: ok.map((m) => ({ id: m.sender, cPk: m.cPk, sPk: m.sPk })),
    };
  }

  /** Round 1: collect encrypted shares; returns one forward per participant, holding the ciphertexts addressed to it. */
  shareKeys(msgs: readonly unknown[]): Map<string, SharesForward> {
    this.next(1, 'shareKeys');
    const { nbrs } = this.s;
    const ok = this.accept<ShareKeys>('share-keys', ShareKeysSchema, msgs, this.keys, (m) => {
      if (fromB64(m.bCommit).length !== 32) return 'bCommit must be 32 bytes';
      const want = [...nbrs.get(m.sender)!].filter((v) => this.keys.has(v));
      const to = new Set<string>();
      for (const sh of m.shares) {
        if (!want.includes(sh.to)) return `share addressed to ${sh.to}, not a neighbour that advertised keys`;
        if (to.has(sh.to)) return `two shares for ${sh.to}`;
        to.add(sh.to);
        if (fromB64(sh.nonce).length !== 12) return `nonce for ${sh.to} is not 12 bytes`;
        if (fromB64(sh.ct).length !== SHARE_PLAINTEXT + 16)
          return `ciphertext for ${sh.to} is not ${SHARE_PLAINTEXT + 16} bytes`;
      }
      if (to.size !== want.length) return `shares for ${to.size} of ${want.length} neighbours`;
      return undefined;
    });
    this.needT(ok.length, 'share keys');
    for (const m of ok) {
      this.u2.add(m.sender);
      this.bCommits.set(m.sender, fromB64(m.bCommit));
    }
    const participants = [...this.u2];
    const out = new Map<string, SharesForward>();
    for (const v of participants)
      out.set(v, { type: 'secagg.shares', roundId: this.s.cfg.roundId, to: v, participants, shares: [] });
    for (const m of ok) {
      this.holdersOf.set(m.sender, new Set([m.sender, ...m.shares.map((s) => s.to).filter((t) => this.u2.has(t))]));
      for (const sh of m.shares) out.get(sh.to)?.shares.push({ from: m.sender, nonce: sh.nonce, ct: sh.ct });
    }
    return out;
  }

  /** Round 2: collect masked inputs; returns the unmasking request naming the survivors U3. */
  maskedInputs(msgs: readonly unknown[]): UnmaskRequest {
    this.next(2, 'maskedInputs');
    const bytes = maskedLength(this.s.cfg) * 8;
    const ok = this.accept<MaskedInput>('masked-input', MaskedInputSchema, msgs, this.u2, (m) => {
      const n = fromB64(m.masked).length;
      return n === bytes ? undefined : `masked input of ${n} bytes, expected ${bytes}`;
    });
    this.needT(ok.length, 'masked input');
    for (const m of ok) {
      const b = fromB64(m.masked);
      this.masked.set(m.sender, new Uint32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
    }
    return { type: 'secagg.unmask-request', roundId: this.s.cfg.roundId, survivors: [...this.masked.keys()] };
  }

  /** Round 3: collect revealed shares, reconstruct the masks of survivors and dropped clients, return the sum. */
  unmask(msgs: readonly unknown[]): SecAggResult {
    this.next(3, 'unmask');
    const { cfg, enc, index, nbrs } = this.s;
    const u3 = new Set(this.masked.keys());
    const bShares = new Map<string, Share[]>();
    const sShares = new Map<string, Share[]>();
    const ok = this.accept<Unmask>('unmask', UnmaskSchema, msgs, u3, (m) => {
      const seen = new Set<string>();
      for (const [list, wantSurvivor] of [
        [m.bShares, true],
        [m.sShares, false],
      ] as const) {
        for (const r of list) {
          if (seen.has(r.of)) return `two shares of ${r.of}`;
          seen.add(r.of);
          if (!this.holdersOf.get(r.of)?.has(m.sender)) return `${m.sender} holds no share of ${r.of}`;
          if (u3.has(r.of) !== wantSurvivor)
            return wantSurvivor ? `b share of ${r.of}, which dropped` : `s-key share of ${r.of}, which survived`;
          const b = fromB64(r.share);
          if (b.length !== SHARE_BYTES) return `share of ${r.of} is ${b.length} bytes, expected ${SHARE_BYTES}`;
          if (bytesToBig(b) >= P) return `share of ${r.of} is not a field element`;
        }
      }
      return undefined;
    });
    for (const m of ok) {
      const x = index.get(m.sender)!;
      for (const r of m.bShares) push(bShares, r.of, { x, y: bytesToBig(fromB64(r.share)) });
      for (const r of m.sShares) push(sShares, r.of, { x, y: bytesToBig(fromB64(r.share)) });
    }
    const dropped = [...this.u2].filter((v) => !u3.has(v));
    const problems: string[] = [];
    const recover = (of: string, shares: Share[] | undefined, what: string): Buffer | undefined => {
      const have = shares?.length ?? 0;
      if (have < cfg.threshold) {
        problems.push(
          `${what} of ${of}: ${have} share${have === 1 ? '' : 's'} available (from ${shares?.map((s) => cfg.clients[s.x - 1]).join(', ') || 'nobody'}), ${cfg.threshold} needed`,
        );
        return undefined;
      }
      const v = combine(shares!.slice(0, cfg.threshold));
      if (v >= 1n << 256n) {
        problems.push(`${what} of ${of}: reconstruction is not 32 bytes (a share is forged)`);
        return undefined;
      }
      return bigToBytes(v, 32);
    };
    const L1 = maskedLength(cfg);
    const acc = new Uint32Array(2 * L1);
    for (const u of u3) {
      addInto(acc, this.masked.get(u)!);
      const b = recover(u, bShares.get(u), 'self-mask seed');
      if (b === undefined) continue;
      if (!bCommitment(cfg.roundId, u, b).equals(this.bCommits.get(u)!)) {
        problems.push(`self-mask seed of ${u}: reconstruction does not match its commitment (a share is forged)`);
        continue;
      }
      subInto(acc, expandMask(b, cfg.roundId, L1));
    }
    for (const v of dropped) {
      const sk = recover(v, sShares.get(v), 'mask key');
      if (sk === undefined) continue;
      if (!publicOf(sk).equals(this.keys.get(v)!.sPk)) {
        problems.push(`mask key of ${v}: reconstruction does not match its public key (a share is forged)`);
        continue;
      }
      for (const u of nbrs.get(v)!) {
        if (!u3.has(u)) continue;
        // u added +PRG(s_uv) when v < u, -PRG(s_uv) when v > u: take it back out.
        const m = expandMask(agree(sk, this.keys.get(u)!.sPk), cfg.roundId, L1);
        if (index.get(v)! < index.get(u)!) subInto(acc, m);
        else addInto(acc, m);
      }
    }
    if (problems.length > 0)
      throw new SecAggError(
        `cannot unmask the sum (${ok.length} of ${u3.size} survivors answered, ${dropped.length} dropped after sharing keys): ${problems.join('; ')}`,
      );
    const { sum, weightSum, stats } = decodeSum(enc, acc, cfg.statsLength ?? 0);
    this.result = {
      sum: Float32Array.from(sum),
      weightSum,
      stats,
      survivors: [...u3],
      dropped,
      errorBound: errorBound(enc, u3.size),
    };
    return this.result;
  }

  private done(): SecAggResult {
    if (this.result === undefined) throw new SecAggError('the sum is not available before unmask()');
    return this.result;
  }

  /** sum_u w_u x_u over the survivors. */
  sum(): Float32Array {
    return this.done().sum;
  }

  get weightSum(): number {
    return this.done().weightSum;
  }

  /** The weighted mean sum / weightSum: FedAvg of the survivors. */
  mean(): Float32Array {
    const r = this.done();
    if (!(r.weightSum > 0)) throw new SecAggError('weight sum is 0: no mean');
    return r.sum.map((v) => v / r.weightSum);
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l === undefined) m.set(k, [v]);
  else l.push(v);
}

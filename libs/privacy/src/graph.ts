/**
 * Who shares masks and key shares with whom. 'complete': everyone (Bonawitz et al. 2017). 'harary': SecAgg+
 * (Bell et al. 2020): a k-regular Harary graph on a public pseudo-random permutation of the clients (seeded by
 * the round id and a public seed), each client linked to the k/2 nearest on either side of the cycle.
 */
import { createHash } from 'node:crypto';

export type GraphConfig =
  { readonly kind: 'complete' } | { readonly kind: 'harary'; readonly k: number; readonly seed: string };

/** Neighbour sets (excluding self) for each client id, symmetric. */
export function neighbours(clients: readonly string[], roundId: string, cfg: GraphConfig): Map<string, Set<string>> {
  const n = clients.length;
  const out = new Map<string, Set<string>>();
  if (cfg.kind === 'complete') {
    for (const c of clients) out.set(c, new Set(clients.filter((d) => d !== c)));
    return out;
  }
  const k = cfg.k;
  if (!Number.isInteger(k) || k < 2 || k % 2 !== 0 || k >= n)
    throw new RangeError(`harary graph: k must be an even integer in [2, ${n - 1}], got ${k}`);
  // Public permutation: sort by SHA-256(seed | roundId | id).
  const order = clients.toSorted((a, b) => {
    const ha = createHash('sha256').update(`${cfg.seed}|${roundId}|${a}`).digest('hex');
    const hb = createHash('sha256').update(`${cfg.seed}|${roundId}|${b}`).digest('hex');
    return ha < hb ? -1 : ha > hb ? 1 : 0;
  });
  for (const c of clients) out.set(c, new Set());
  for (let i = 0; i < n; i++) {
    for (let d = 1; d <= k / 2; d++) {
      const a = order[i]!;
      const b = order[(i + d) % n]!;
      out.get(a)!.add(b);
      out.get(b)!.add(a);
    }
  }
  return out;
}

/**
 * Bounded disk for the model cache ($FEDBIOT_CACHE, default ~/.cache/fedbiot). Two parts grow with every new
 * version of a checkpoint's weights (retraining, re-downloading, editing a checkpoint in place):
 *   graphs/<checkpoint id>/w-<version>-<file>   hard links (or copies) of the fp32 weight files the graphs map; a link
 *                                               keeps an old version's bytes alive after the checkpoint replaced it
 *   fp32/<header hash>/model.safetensors        fp32 conversions of fp16/bf16 checkpoints, one per version
 * pruneModelCache keeps the newest `keepVersions` versions of each weight file (by the weights' mtime) and of each
 * source checkpoint's fp32 conversion, then, with `maxBytes`, removes whole least recently used entries until the
 * bytes the cache alone holds fit. Other folders under the cache (data, packages) are left alone.
 *
 * Deleting a file an ONNX Runtime session has memory-mapped is safe on Linux (the mapping keeps the inode); a
 * process that is loading the same checkpoint version as it is pruned re-links it on its next load.
 */
import { existsSync, readdirSync, rmSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { readSafetensorsHeaderSync } from '../../engine/src/light.js';

export interface PruneCacheOptions {
  /** Versions of each weight file / fp32 conversion to keep, newest first. Default 2; at least 1. */
  readonly keepVersions?: number;
  /** Afterwards, remove least recently used entries until the cache's own bytes are at most this. */
  readonly maxBytes?: number;
  /** Report what would be removed, remove nothing. */
  readonly dryRun?: boolean;
}

export interface PrunedEntry {
  readonly path: string;
  /** Bytes freed: only blocks no other link holds (a hard link to a live checkpoint frees nothing). */
  readonly bytes: number;
  readonly reason: string;
}

export interface PruneCacheResult {
  readonly removed: readonly PrunedEntry[];
  readonly freedBytes: number;
  /** Bytes only the cache holds, after pruning. */
  readonly keptBytes: number;
}

const WEIGHT_LINK = /^w-([0-9a-f]{12})-(.+)$/;

/** Bytes of `path` that only this link holds (0 for a file with other hard links), recursively for folders. */
function ownBytes(path: string, st: Stats = statSync(path)): number {
  if (st.isDirectory()) return readdirSync(path).reduce((s, n) => s + ownBytes(join(path, n)), 0);
  return st.nlink > 1 ? 0 : st.blocks * 512;
}

interface Entry {
  readonly path: string;
  readonly group: string;
  readonly mtimeMs: number;
  readonly bytes: number;
}

function weightLinks(root: string): Entry[] {
  const graphs = join(root, 'graphs');
  if (!existsSync(graphs)) return [];
  const out: Entry[] = [];
  for (const id of readdirSync(graphs)) {
    const dir = join(graphs, id);
    if (!statSync(dir).isDirectory()) continue;
    for (const name of readdirSync(dir)) {
      const m = WEIGHT_LINK.exec(name);
      if (!m || name.includes('.tmp-')) continue;
      const st = statSync(join(dir, name));
      out.push({
        path: join(dir, name),
        group: join(dir, m[2]!),
        mtimeMs: st.mtimeMs,
        bytes: ownBytes(join(dir, name), st),
      });
    }
  }
  return out;
}

function fp32Conversions(root: string): Entry[] {
  const fp32 = join(root, 'fp32');
  if (!existsSync(fp32)) return [];
  const out: Entry[] = [];
  for (const id of readdirSync(fp32)) {
    const file = join(fp32, id, 'model.safetensors');
    if (!existsSync(file)) continue;
    let source = `unreadable ${id}`;
    try {
      source = readSafetensorsHeaderSync(file).metadata?.['source'] ?? `unknown ${id}`;
    } catch {
      // A damaged conversion is its own group: kept or dropped by age like any other.
    }
    out.push({ path: join(fp32, id), group: source, mtimeMs: statSync(file).mtimeMs, bytes: ownBytes(join(fp32, id)) });
  }
  return out;
}

/** Prunes the model cache under `root` (see the module comment). */
export function pruneModelCache(root: string, opts: PruneCacheOptions = {}): PruneCacheResult {
  const keep = opts.keepVersions ?? 2;
  if (!(Number.isInteger(keep) && keep >= 1)) throw new RangeError(`keepVersions ${keep}: an integer >= 1`);
  const removed: PrunedEntry[] = [];
  const remove = (e: Entry, reason: string): void => {
    if (!opts.dryRun) rmSync(e.path, { recursive: true, force: true });
    removed.push({ path: e.path, bytes: e.bytes, reason });
  };
  const survivors: Entry[] = [];
  for (const [kind, entries] of [
    ['weight version', weightLinks(root)],
    ['fp32 conversion', fp32Conversions(root)],
  ] as const) {
    const groups = new Map<string, Entry[]>();
    for (const e of entries) groups.set(e.group, [...(groups.get(e.group) ?? []), e]);
    for (const [group, list] of groups) {
      const newest = list.toSorted((a, b) => b.mtimeMs - a.mtimeMs);
      survivors.push(...newest.slice(0, keep));
      for (const e of newest.slice(keep)) remove(e, `${kind} of ${group} older than the newest ${keep}`);
    }
  }
  let kept = survivors.reduce((s, e) => s + e.bytes, 0);
  if (opts.maxBytes !== undefined) {
    // Least recently used first; the newest version of each group goes last.
    for (const e of survivors.toSorted((a, b) => a.mtimeMs - b.mtimeMs)) {
      if (kept <= opts.maxBytes) break;
      if (e.bytes === 0) continue;
      remove(e, `cache above ${opts.maxBytes} bytes`);
      kept -= e.bytes;
    }
  }
  return { removed, freedBytes: removed.reduce((s, e) => s + e.bytes, 0), keptBytes: kept };
}

/**
 * Keeps the newest `keep` versions of weight file `fileName` in one graph folder (GraphStore calls it after linking
 * a new version, so a checkpoint rewritten in place does not pile up old weights). Returns the removed paths.
 */
export function pruneWeightVersions(dir: string, fileName: string, keep = 2): string[] {
  const versions = readdirSync(dir)
    .filter((n) => !n.includes('.tmp-') && WEIGHT_LINK.exec(n)?.[2] === fileName)
    .map((n) => ({ path: join(dir, n), mtimeMs: statSync(join(dir, n)).mtimeMs }))
    .toSorted((a, b) => b.mtimeMs - a.mtimeMs);
  const doomed = versions.slice(keep).map((v) => v.path);
  for (const p of doomed) rmSync(p, { force: true });
  return doomed;
}

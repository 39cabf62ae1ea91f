/**
 * The libs are package boundaries (docs/architecture.md). This test reads the TypeScript sources and checks:
 * - code outside a lib imports it only through its entries, `libs/<lib>/src/index.ts` or `libs/<lib>/src/light.ts`
 *   (the part that loads no onnxruntime); a lib's own tests may import its src deeply;
 * - imports between layers point one way (LAYERS below), and libs never import services, bench, bin or tests;
 * - no import circle, between libs or between the modules of one lib;
 * - from the compiled output: a light entry, and the processes that must start without it, never load onnxruntime.
 * Offenders are listed as file:line.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { repoRoot } from '../support/paths.js';

const AREAS = ['libs', 'services', 'bench', 'bin', 'test'];
/** The public entries of a lib: everything else under its src/ is private to the lib (and its tests). */
const ENTRIES = new Set(['index.ts', 'light.ts']);
/** Which libs each lib may import (services, bench, bin and test may import any lib). */
const LAYERS: Record<string, readonly string[]> = {
  engine: [],
  data: [],
  privacy: [],
  protocol: ['privacy'],
  model: ['engine'],
  fedbiot: ['model', 'engine', 'data', 'protocol', 'privacy'],
};

interface Import {
  /** file:line of the import, relative to the repository root. */
  at: string;
  from: string;
  /** The imported file, relative to the repository root, `.ts` for a `.js` specifier. */
  to: string;
  /** `import type` / `export type`: erased when compiled. */
  typeOnly: boolean;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(repoRoot, dir))) {
    const path = join(dir, name);
    if (name === 'node_modules' || name === 'fixtures') continue;
    if (statSync(join(repoRoot, path)).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path.split(sep).join('/'));
  }
  return out;
}

/** Static imports and re-exports (`import ... from`, `export ... from`, `import '...'`) and `import('...')`. */
const IMPORT_RE =
  /(?:^|\n)\s*(import|export)(\s+type)?\s[^;'"]*?from\s*'([^']+)'|(?:^|\n)\s*import\s*'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/g;

function importsOf(file: string): Import[] {
  const src = readFileSync(join(repoRoot, file), 'utf8');
  const out: Import[] = [];
  for (const m of src.matchAll(IMPORT_RE)) {
    const spec = m[3] ?? m[4] ?? m[5]!;
    if (!spec.startsWith('.')) continue;
    const to = relative(repoRoot, resolve(repoRoot, dirname(file), spec))
      .split(sep)
      .join('/')
      .replace(/\.js$/, '.ts');
    const offset = m.index + m[0].search(/\S/);
    const line = src.slice(0, offset).split('\n').length;
    out.push({ at: `${file}:${line}`, from: file, to, typeOnly: m[2] !== undefined });
  }
  return out;
}

const files = AREAS.flatMap(sourceFiles);
const imports = files.flatMap(importsOf);
const libOf = (file: string): string | undefined => /^libs\/([a-z]+)\//.exec(file)?.[1];
const areaOf = (file: string): string => libOf(file) ?? file.split('/')[0]!;

/** Every import of another lib's src that is not one of its entries. */
export function deepImports(all: readonly Import[]): string[] {
  const out: string[] = [];
  for (const i of all) {
    const target = /^libs\/([a-z]+)\/src\/(.+)$/.exec(i.to);
    if (!target || target[1] === libOf(i.from)) continue;
    if (!ENTRIES.has(target[2]!)) out.push(`${i.at} imports ${i.to}`);
  }
  return out;
}

test('other code imports a lib only through its entries (index.ts, light.ts)', () => {
  const deep = deepImports(imports);
  if (deep.length > 0) {
    assert.fail(`${deep.length} deep imports into libs (use libs/<lib>/src/index.ts or light.ts):\n${deep.join('\n')}`);
  }
});

test('the check catches a deep import', () => {
  const planted: Import = {
    at: 'services/x.ts:1',
    from: 'services/x.ts',
    to: 'libs/model/src/causal-lm.ts',
    typeOnly: false,
  };
  assert.deepEqual(deepImports([planted]), ['services/x.ts:1 imports libs/model/src/causal-lm.ts']);
});

test('imports between areas follow the layers', () => {
  const wrong: string[] = [];
  for (const i of imports) {
    const from = areaOf(i.from);
    const to = areaOf(i.to);
    // A lib's tests may use the shared test support; its sources are what the layers constrain.
    if (from === to || !(from in LAYERS) || !i.from.startsWith(`libs/${from}/src/`)) continue;
    if (!(to in LAYERS)) wrong.push(`${i.at} (libs/${from}) imports ${i.to}: libs never import ${to}`);
    else if (!LAYERS[from]!.includes(to)) wrong.push(`${i.at} (libs/${from}) imports libs/${to}: not below it`);
  }
  if (wrong.length > 0) assert.fail(`${wrong.length} imports against the layers:\n${wrong.join('\n')}`);
});

/** The circles of a directed graph, each as the list of its nodes (one per strongly connected component). */
function circles(edges: Map<string, Set<string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || edges.get(v)?.has(v)) out.push(scc.toSorted());
    }
  };
  for (const v of edges.keys()) if (!index.has(v)) visit(v);
  return out;
}

function graph(pairs: Iterable<[string, string]>): Map<string, Set<string>> {
  const edges = new Map<string, Set<string>>();
  for (const [a, b] of pairs) {
    if (!edges.has(a)) edges.set(a, new Set());
    if (!edges.has(b)) edges.set(b, new Set());
    edges.get(a)!.add(b);
  }
  return edges;
}

test('no import circle between libs', () => {
  const pairs: [string, string][] = [];
  for (const i of imports) {
    const from = libOf(i.from);
    const to = libOf(i.to);
    if (from && to && from !== to && i.from.startsWith(`libs/${from}/src/`)) pairs.push([from, to]);
  }
  assert.deepEqual(circles(graph(pairs)), []);
});

test('no import circle between the modules of a lib', () => {
  // Type-only imports are erased at compile time and cannot form a circle at load time; every other import counts.
  const pairs: [string, string][] = imports
    .filter((i) => !i.typeOnly && /^libs\/[a-z]+\/src\//.test(i.from) && libOf(i.from) === libOf(i.to))
    .map((i) => [i.from, i.to]);
  const found = circles(graph(pairs));
  assert.deepEqual(found, [], found.map((c) => c.join(' <-> ')).join('\n'));
});

/**
 * Modules that must load without onnxruntime-node: the light entries, and the processes that start without it (the
 * experiment runner spawns one job per cell, the services launcher spawns the services, the jobs CLI only talks to
 * NATS). Read from the compiled JavaScript beside this test, where type-only imports are gone.
 */
const MUST_STAY_LIGHT = [
  'libs/engine/src/light.js',
  'libs/model/src/light.js',
  'libs/fedbiot/src/light.js',
  'libs/data/src/index.js',
  'libs/protocol/src/index.js',
  'libs/privacy/src/index.js',
  'bin/experiment.js',
  'bin/jobs.js',
  'bin/services.js',
  'services/common/env.js',
  'services/common/logger.js',
];
/** The module that loads the native binding (libs/engine/src/runtime/ort.ts). */
const ORT_MODULE = 'libs/engine/src/runtime/ort.js';

/** The chain of static imports from `start` to ORT_MODULE, or undefined when there is none. */
function pathToOrt(distRoot: string, start: string): string[] | undefined {
  const seen = new Set<string>();
  const walk = (file: string, chain: string[]): string[] | undefined => {
    if (seen.has(file)) return undefined;
    seen.add(file);
    if (file === ORT_MODULE) return [...chain, file];
    const js = readFileSync(join(distRoot, file), 'utf8');
    for (const m of js.matchAll(/^(?:import|export)\s[^;]*?from\s*'(\.[^']+)'|^import\s*'(\.[^']+)'/gm)) {
      const next = relative(distRoot, resolve(distRoot, dirname(file), (m[1] ?? m[2])!))
        .split(sep)
        .join('/');
      if (!existsSync(join(distRoot, next))) continue;
      const found = walk(next, [...chain, file]);
      if (found) return found;
    }
    return undefined;
  };
  return walk(start, []);
}

test('the light entries and the launchers load no onnxruntime-node', () => {
  const distRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const heavy: string[] = [];
  for (const start of MUST_STAY_LIGHT) {
    assert.ok(existsSync(join(distRoot, start)), `${start} is not compiled under ${distRoot}`);
    const chain = pathToOrt(distRoot, start);
    if (chain) heavy.push(chain.join(' -> '));
  }
  if (heavy.length > 0) assert.fail(`modules that must stay light load onnxruntime-node:\n${heavy.join('\n')}`);
});

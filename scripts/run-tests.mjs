#!/usr/bin/env node
// Runs every compiled test file under dist/ with node's built-in test runner.
// Usage: node scripts/run-tests.mjs [--dist DIR] [filter...]   (filters are substrings of the test path)
// Node 20's runner takes no globs, so the files are collected here; its summary ("# pass N / # fail N")
// is what CI reads.
import { readdirSync, statSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
let dist = 'dist';
const filters = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--dist') dist = args[++i];
  else filters.push(args[i]);
}
if (!existsSync(dist)) {
  console.error(`run-tests: ${dist}/ does not exist; build first (npm run build)`);
  process.exit(2);
}
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.test.js')) files.push(path);
  }
})(dist);
const chosen = files.filter((f) => filters.length === 0 || filters.some((s) => relative(dist, f).includes(s))).sort();
if (chosen.length === 0) {
  console.error(`run-tests: no test files matched under ${dist}/`);
  process.exit(2);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...chosen], { stdio: 'inherit' });
process.exit(r.status ?? 1);

import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project root: the nearest ancestor of this file holding package.json (works from src and any dist). */
export const repoRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('test/support/paths: no package.json above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
})();

/** Hugging Face reference fixtures (transformers 5.17 / peft 0.21 outputs), committed under test/fixtures/hf. */
export const fixturesDir: string = resolve(repoRoot, 'test', 'fixtures', 'hf');

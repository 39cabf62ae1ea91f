/**
 * Disk errors of the model cache name the path and the setting behind it (issue 17): a cache folder the process may
 * not create (here under /sys, refused even to root) and a full device (/dev/full, a real ENOSPC).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CacheDiskError, onCacheDisk } from '../src/cache-errors.js';
import { openCheckpoint } from '../src/checkpoint.js';
import { GraphStore } from '../src/graph-store.js';
import { repoRoot } from '../../../test/support/paths.js';

test('an unwritable FEDBIOT_CACHE is named with the graph folder it could not create', async () => {
  const ckpt = await openCheckpoint(join(repoRoot, 'models', 'demo-llama'));
  const before = process.env['FEDBIOT_CACHE'];
  process.env['FEDBIOT_CACHE'] = '/sys/fedbiot-cache';
  try {
    assert.throws(
      () => new GraphStore(ckpt),
      (e: unknown) =>
        e instanceof CacheDiskError &&
        e.path.startsWith('/sys/fedbiot-cache/graphs/') &&
        /\/sys\/fedbiot-cache\/graphs\/[0-9a-f]+: (operation not permitted|permission denied|read-only file system) \(E\w+\); the model cache is set by FEDBIOT_CACHE=\/sys\/fedbiot-cache: make it writable/.test(
          e.message,
        ),
    );
  } finally {
    if (before === undefined) delete process.env['FEDBIOT_CACHE'];
    else process.env['FEDBIOT_CACHE'] = before;
  }
});

test('ENOSPC names the file being written and how to free space', () => {
  assert.throws(
    () => onCacheDisk('/dev/full', () => writeFileSync('/dev/full', new Uint8Array(1 << 16))),
    (e: unknown) =>
      e instanceof CacheDiskError &&
      e.code === 'ENOSPC' &&
      /^\/dev\/full: no space left on the device \(ENOSPC\); the model cache is set by FEDBIOT_CACHE.*prune-cache/.test(
        e.message,
      ),
  );
  // Other errors pass through unchanged.
  assert.throws(() => onCacheDisk('/x', () => JSON.parse('{')), SyntaxError);
});

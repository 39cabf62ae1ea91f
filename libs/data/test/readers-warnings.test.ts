/**
 * Suspicious dataset lines are read but no longer silently (issue 17): a line over 1 MiB and bytes that are not
 * UTF-8 are warned about with file:line; a file that cannot be read names the setting it came from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DatasetError, type DatasetIssue } from '../src/errors.js';
import { MAX_LINE_BYTES, readJsonl, readText } from '../src/readers.js';
import { withTmp } from '../../../test/support/tmp.js';

test('a 5 MB line and a non-UTF-8 line are warned about with file:line; the records are still read', async () => {
  await withTmp('data-warn-', async (dir) => {
    const file = join(dir, 'train.jsonl');
    const long = JSON.stringify({ prompt: 'x'.repeat(5_000_000), completion: 'y' });
    const bad = Buffer.concat([
      Buffer.from('{"prompt":"caf'),
      Buffer.from([0xe9]), // latin-1 é: not UTF-8
      Buffer.from('","completion":"ok"}'),
    ]);
    await writeFile(
      file,
      Buffer.concat([Buffer.from('{"prompt":"a","completion":"b"}\n' + long + '\n'), bad, Buffer.from('\n')]),
    );
    const warnings: DatasetIssue[] = [];
    const records = await readJsonl(file, { onWarning: (w) => warnings.push(w) });
    assert.equal(records.length, 3);
    assert.deepEqual(
      warnings.map((w) => [w.file, w.line]),
      [
        [file, 2],
        [file, 3],
      ],
    );
    assert.match(warnings[0]!.reason, new RegExp(`line of 5000\\d+ bytes, over ${MAX_LINE_BYTES}`));
    assert.match(warnings[1]!.reason, /not valid UTF-8; the bad bytes were replaced by U\+FFFD/);
    // Clean files warn about nothing.
    const clean = join(dir, 'clean.txt');
    await writeFile(clean, 'some public text\n\nmore text\n');
    const none: DatasetIssue[] = [];
    assert.equal((await readText(clean, { onWarning: (w) => none.push(w) })).length, 2);
    assert.deepEqual(none, []);
  });
});

test('a missing public corpus names the setting and the path', async () => {
  await assert.rejects(
    readText('/nonexistent/public.txt', { setting: 'alignment.publicData' }),
    (e: unknown) =>
      e instanceof DatasetError &&
      e.message === 'alignment.publicData: /nonexistent/public.txt: cannot read: no such file (ENOENT)',
  );
});

/** Progress lines for logs: an estimate of the time left once time has passed, in units a person reads. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { formatDuration, progress, roundsEta } from '../src/progress.js';

test('plain mode shows the time left from the mean step time so far', () => {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (b: Buffer) => (text += b.toString()));
  let clock = 0;
  const p = progress('base evaluation', 4, { stream, tty: false, everyPercent: 25, now: () => clock });
  clock = 3000;
  p.tick(1, 'add');
  clock = 5000;
  p.tick(1, 'sub');
  clock = 9000;
  p.tick(1, 'mul');
  p.tick(1, 'mul');
  p.done();
  assert.deepEqual(text.trimEnd().split('\n'), [
    'base evaluation: 1/4 (25%, ~9s left) add',
    'base evaluation: 2/4 (50%, ~5s left) sub',
    'base evaluation: 3/4 (75%, ~3s left) mul',
    'base evaluation: done 4/4 in 9.0s',
  ]);
});

test('formatDuration: seconds, minutes, hours', () => {
  assert.equal(formatDuration(0), '0s');
  assert.equal(formatDuration(42_400), '42s');
  assert.equal(formatDuration(185_000), '3m05s');
  assert.equal(formatDuration(3_720_000), '1h02m');
});

test('LOG_LEVEL=warn hides progress on stderr; a bad LOG_LEVEL does not stop a job here', () => {
  const saved = process.env['LOG_LEVEL'];
  const write = process.stderr.write.bind(process.stderr);
  let written = '';
  process.stderr.write = ((chunk: string | Uint8Array) => ((written += String(chunk)), true)) as typeof write;
  try {
    process.env['LOG_LEVEL'] = 'warn';
    const quiet = progress('hidden', 2, { tty: false });
    quiet.tick(2);
    quiet.done();
    assert.equal(written, '');
    process.env['LOG_LEVEL'] = 'loud';
    const shown = progress('shown', 1, { tty: false });
    shown.done();
    assert.match(written, /^shown: done 0\/1 in/);
  } finally {
    process.stderr.write = write;
    if (saved === undefined) delete process.env['LOG_LEVEL'];
    else process.env['LOG_LEVEL'] = saved;
  }
});

test('roundsEta: the mean round time so far times the rounds left, counted from where this process began', () => {
  let clock = 0;
  const eta = roundsEta(5, () => clock);
  assert.equal(eta.after(0), '', 'nothing known yet');
  clock = 40_000; // pre-alignment: not a round
  eta.begin(2); // resumed at round 2
  eta.begin(3); // later rounds do not restart the clock
  clock = 100_000;
  assert.equal(eta.after(3), '; ~2m00s left', 'one round in 60s, two left');
  clock = 130_000;
  assert.equal(eta.after(4), '; ~45s left');
  assert.equal(eta.after(5), '', 'nothing left');
});

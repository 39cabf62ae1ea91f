/**
 * The nats-auth CLI as an operator runs it: identities for a job's clients and services, seeds written 0600 and
 * never printed, an auth.conf nats-server accepts and enforces (a generated client seed may publish its own update
 * subject only), existing credentials never overwritten, clear errors for bad input.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, nkeyAuthenticator } from '@nats-io/transport-node';
import { startPrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { repoRoot } from '../support/paths.js';

const cli = join(repoRoot, 'dist', 'bin', 'nats-auth.js');
const tmp = mkdtempSync(join(tmpdir(), 'nats-auth-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

const jobFile = join(tmp, 'job.yaml');
writeFileSync(jobFile, `job:\n  id: cli-job\nmodel:\n  checkpoint: ${join(repoRoot, 'models', 'demo-llama')}\n`);

test('writes one identity per client and service, seeds 0600 and unprinted, and an auth.conf the server enforces', async () => {
  const out = join(tmp, 'creds');
  const r = run('--job', jobFile, '--out', out, '--clients', 'alice,bob');
  assert.equal(r.status, 0, r.stderr);
  const names = [
    'client-alice',
    'client-bob',
    ...['aggregator', 'server-alignment', 'evaluator', 'client-trainer'].map((s) => `service-${s}`),
  ];
  for (const n of names) {
    assert.match(r.stdout, new RegExp(`\\| ${n} +\\| (client|service) +\\| U[A-Z2-7]{55} +\\| _INBOX_${n} +\\|`));
    const seedFile = join(out, `${n}.nk`);
    assert.equal(statSync(seedFile).mode & 0o777, 0o600, `${n}.nk is 0600`);
    const seed = readFileSync(seedFile, 'utf8').trim();
    assert.match(seed, /^SU[A-Z2-7]{56}$/);
    assert.ok(!r.stdout.includes(seed) && !r.stderr.includes(seed), `the seed of ${n} is not printed`);
  }
  const ids = JSON.parse(readFileSync(join(out, 'identities.json'), 'utf8')) as { identities: { name: string }[] };
  assert.deepEqual(ids.identities.map((i) => i.name).toSorted(), names.toSorted());
  const listed = readFileSync(join(out, 'identities.json'), 'utf8');
  for (const n of names)
    assert.ok(!listed.includes(readFileSync(join(out, `${n}.nk`), 'utf8').trim()), `identities.json lacks ${n}'s seed`);

  const server = await startPrivateNats(() => readFileSync(join(out, 'auth.conf'), 'utf8'));
  try {
    const seed = readFileSync(join(out, 'client-alice.nk'));
    const nc = await connect({
      servers: server.url,
      reconnect: false,
      authenticator: nkeyAuthenticator(new Uint8Array(seed.subarray(0, 58))),
      inboxPrefix: '_INBOX_client-alice',
    });
    const errors: string[] = [];
    void (async () => {
      for await (const s of nc.status()) if (s.type === 'error') errors.push(String(s.error));
    })();
    nc.publish('fl.cli-job.round.0.update.alice', '{}');
    nc.publish('fl.cli-job.round.0.update.bob', '{}');
    await nc.flush().catch(() => {});
    for (let i = 0; i < 50 && errors.length === 0; i++) await new Promise((res) => setTimeout(res, 20));
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.match(errors[0]!, /Permissions Violation for Publish to "fl\.cli-job\.round\.0\.update\.bob"/);
    await nc.close();
  } finally {
    await server.stop();
  }

  // Run again into the same folder: refused, and nothing in it changed.
  const before = readdirSync(out).map((f) => readFileSync(join(out, f), 'utf8'));
  const again = run('--job', jobFile, '--out', out, '--clients', 'alice,bob');
  assert.equal(again.status, 1);
  assert.match(again.stderr, /--out .* is not empty: its credentials are kept \(pass --force to replace them\)/);
  assert.deepEqual(
    readdirSync(out).map((f) => readFileSync(join(out, f), 'utf8')),
    before,
  );
});

test('password credentials: the auth.conf holds secrets and is 0600 too; bad input names the problem', () => {
  const out = join(tmp, 'pw');
  const r = run('--job', jobFile, '--out', out, '--clients', 'alice', '--credentials', 'password');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(statSync(join(out, 'auth.conf')).mode & 0o777, 0o600);
  const pw = readFileSync(join(out, 'client-alice.password'), 'utf8').trim();
  assert.ok(readFileSync(join(out, 'auth.conf'), 'utf8').includes(pw));
  assert.ok(!r.stdout.includes(pw));

  assert.match(run('--out', out).stderr, /--job and --out are required/);
  assert.match(run('--job', jobFile, '--out', join(tmp, 'x'), '--clients', 'a.b').stderr, /client id "a\.b"/);
  assert.match(run('--job', jobFile, '--out', join(tmp, 'y'), '--credentials', 'jwt').stderr, /--credentials: jwt/);
  const noId = join(tmp, 'noid.yaml');
  writeFileSync(noId, `model:\n  checkpoint: ${join(repoRoot, 'models', 'demo-llama')}\n`);
  assert.match(run('--job', noId, '--out', join(tmp, 'z'), '--clients', 'a').stderr, /noid\.yaml: job\.id is required/);
});

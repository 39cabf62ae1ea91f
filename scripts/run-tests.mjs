#!/usr/bin/env node
// Runs every compiled test file under dist/ with node's built-in test runner, in a provisioned environment.
// Usage: node scripts/run-tests.mjs [--dist DIR] [--no-env] [filter...]   (filters are substrings of the test path)
//
// First `scripts/test-env.sh up` installs and starts what the tests need beyond node_modules (chromium, dockerd,
// nats-server on 127.0.0.1:4222, the local Docker images; see that script): if it cannot, the run stops there with
// its message instead of skipping tests. Afterwards `scripts/test-env.sh down` removes leftover Testcontainers
// containers and stops the daemons it started. --no-env (or FEDBIOT_TEST_ENV=off) leaves both out, for quick
// filtered runs on a machine that is already set up.
// Node 20's runner takes no globs, so the files are collected here; its summary ("# pass N / # fail N")
// is what CI reads.
import { readdirSync, statSync, existsSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
let dist = 'dist';
let provision = process.env.FEDBIOT_TEST_ENV !== 'off';
const filters = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--dist') dist = args[++i];
  else if (args[i] === '--no-env') provision = false;
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

const testEnv = join(dirname(fileURLToPath(import.meta.url)), 'test-env.sh');
// Only the container tests run the services image; other runs need not rebuild it after every code change.
const needsAppImage = chosen.some((f) => relative(dist, f).split(sep).includes('containers'));
const envScript = (cmd) =>
  spawnSync('bash', [testEnv, cmd, String(process.pid)], {
    stdio: 'inherit',
    env: { ...process.env, DIST_DIR: dist, FEDBIOT_TEST_ENV_APP_IMAGE: needsAppImage ? '1' : '0' },
  });

if (provision) {
  const up = envScript('up');
  if (up.status !== 0) {
    envScript('down');
    console.error(`run-tests: the test environment could not be provisioned (scripts/test-env.sh up: ${up.status})`);
    process.exit(1);
  }
}

// Testcontainers: Ryuk's image would come from Docker Hub (unreachable), and the host override skips the
// "inside a container" probe that pulls alpine.
const env = { TESTCONTAINERS_RYUK_DISABLED: 'true', TESTCONTAINERS_HOST_OVERRIDE: 'localhost', ...process.env };
const child = spawn(process.execPath, ['--test', '--test-concurrency=1', ...chosen], { stdio: 'inherit', env });
// A Ctrl-C or kill reaches the test runner (same process group, or forwarded); teardown still runs after it exits.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => {
  if (provision) envScript('down');
  process.exit(code ?? (signal ? 1 : 0));
});

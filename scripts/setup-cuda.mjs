#!/usr/bin/env node
// `npm run setup:cuda`: installs onnxruntime-node's CUDA execution provider from the npm registry.
//
// onnxruntime-node ships the CPU and WebGPU providers; its CUDA provider (two shared libraries) is downloaded by its
// install script from a NuGet feed (`ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci --ignore-scripts=false`, CUDA 12 +
// cuDNN 9), which this project's .npmrc skips because only the npm registry is reachable here. Microsoft's prebuilt CUDA 13 provider
// libraries are also published on npm, inside a Unity package (com.github.asus4.onnxruntime.linux-x64-gpu), for
// onnxruntime 1.29.0 only. A provider must come from the same onnxruntime release as the binding that loads it, and
// the pinned onnxruntime-node is 1.30.0 (1.29.0's WebGPU provider aborts in the alignment step on the GPU machine),
// so this script installs onnxruntime-node 1.29.0 beside the pinned one, under .cache/onnxruntime-cuda/ (npm ci keeps
// it), takes the two libraries from the Unity package (sha256 and version string checked) into that copy's binary
// folder, and checks that the provider starts. Processes that train on CUDA start with FEDBIOT_ORT_BINDING=cuda
// (libs/engine/src/runtime/ort.ts); CPU and WebGPU stay on the pinned binding. Should the pin ever match a release
// listed in PROVIDERS below, the provider goes into the pinned package's folder instead and no variable is needed.
//
// Usage: node scripts/setup-cuda.mjs [--from DIR|FILE.tgz] [--force] [--check]
//   --from   take the libraries from a folder holding them, or from the package's .tgz, instead of `npm pack`
//   --force  reinstall even if the same files are already there
//   --check  install nothing; check that the CUDA provider starts here (exit 1 if not)
// After installing, it checks that the provider starts (a one-node model on the GPU) and, if not, names the
// library that is missing and where on this machine a copy of it was found (for LD_LIBRARY_PATH).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** onnxruntime-node version -> npm package carrying Microsoft's prebuilt CUDA provider for that onnxruntime release. */
const PROVIDERS = {
  '1.29.0': {
    package: 'com.github.asus4.onnxruntime.linux-x64-gpu',
    version: '0.4.9',
    dir: 'package/Plugins/Linux/x64',
    cuda: 'CUDA 13 (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10; no cuDNN)',
    sha256: {
      'libonnxruntime_providers_shared.so': 'c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772',
      'libonnxruntime_providers_cuda.so': '56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037',
    },
  },
};
const FILES = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'];
const MARKER = 'libonnxruntime_providers_cuda.install.json'; // read by libs/engine/src/runtime/cuda-libs.ts

// y = a + b on float32[1] (opset 17), the engine's provider probe model, serialized.
const PROBE_MODEL =
  'CAgSCmZlZGJpb3QtdHM6VgoVCgFhCgFiEgF5GgNhZGQiA0FkZDoAEgpjdWRhLXByb2JlWg8KAWESCgoICAESBAoCCAFaDwoBYhIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAR';

const args = process.argv.slice(2);
const flag = (name) => args.includes(`--${name}`);
const option = (name) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const say = (msg) => console.log(`setup:cuda: ${msg}`);
const fail = (msg) => {
  console.error(`setup:cuda: ${msg}`);
  process.exit(1);
};
const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');

if (process.platform !== 'linux' || process.arch !== 'x64') {
  fail(`the CUDA provider is installed for linux x64 only; this is ${process.platform} ${process.arch}`);
}

let pinnedPkg;
try {
  pinnedPkg = createRequire(join(root, 'package.json')).resolve('onnxruntime-node/package.json');
} catch {
  fail('onnxruntime-node is not installed: run `npm ci` first');
}
const pinnedVersion = JSON.parse(readFileSync(pinnedPkg, 'utf8')).version;

// Where the provider goes. A provider must come from the same onnxruntime release as the binding that loads it. When
// npm carries a provider for the pinned onnxruntime-node, it goes into that package's folder; otherwise the newest
// onnxruntime-node that has one is installed beside the pinned one, under .cache/onnxruntime-cuda (kept by `npm ci`),
// with the provider in its folder, and a CUDA process selects it with FEDBIOT_ORT_BINDING=cuda
// (libs/engine/src/runtime/ort.ts: one binding per process).
const SIDE_HOME = join(root, '.cache', 'onnxruntime-cuda');
const inPlace = PROVIDERS[pinnedVersion] !== undefined;
const ortVersion = inPlace ? pinnedVersion : Object.keys(PROVIDERS).sort().pop();
const ortPkgDir = inPlace ? dirname(pinnedPkg) : join(SIDE_HOME, 'node_modules', 'onnxruntime-node');
const binDir = join(ortPkgDir, 'bin', 'napi-v6', 'linux', 'x64');
const useIt = inPlace ? 'the pinned onnxruntime-node loads it' : 'start node with FEDBIOT_ORT_BINDING=cuda to use it';

const official =
  'where NuGet is reachable, the official route works for the pinned onnxruntime-node: ' +
  '`ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci --ignore-scripts=false` (needs CUDA 12 and cuDNN 9 on the machine).';

if (!flag('check')) {
  if (!inPlace) installSideBinding();
  install();
}
process.exit(check() ? 0 : flag('check') ? 1 : 0);

/** onnxruntime-node `ortVersion` (and its onnxruntime-common) under SIDE_HOME, from the npm registry, no scripts. */
function installSideBinding() {
  const have = existsSync(join(ortPkgDir, 'package.json'))
    ? JSON.parse(readFileSync(join(ortPkgDir, 'package.json'), 'utf8')).version
    : undefined;
  if (have === ortVersion && existsSync(join(binDir, 'onnxruntime_binding.node')) && !flag('force')) return;
  say(
    `the pinned onnxruntime-node is ${pinnedVersion} and npm carries a CUDA provider only for ` +
      `${Object.keys(PROVIDERS).join(', ')}: installing onnxruntime-node ${ortVersion} beside it in ${SIDE_HOME}`,
  );
  mkdirSync(SIDE_HOME, { recursive: true });
  writeFileSync(
    join(SIDE_HOME, 'package.json'),
    JSON.stringify(
      { name: 'fedbiot-onnxruntime-cuda', private: true, dependencies: { 'onnxruntime-node': ortVersion } },
      null,
      1,
    ) + '\n',
  );
  // --ignore-scripts: onnxruntime-node's install script would fetch a CUDA 12 provider from NuGet.
  const r = spawnSync('npm', ['install', '--ignore-scripts', '--omit=dev', '--no-audit', '--no-fund', '--silent'], {
    cwd: SIDE_HOME,
    stdio: 'inherit',
    env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' },
  });
  if (r.status !== 0) fail(`npm install onnxruntime-node@${ortVersion} in ${SIDE_HOME} failed (exit ${r.status})`);
  // Only linux x64 runs CUDA here; the other platforms' binaries are about 100 MB.
  for (const other of ['darwin', 'win32', join('linux', 'arm64')]) {
    rmSync(join(ortPkgDir, 'bin', 'napi-v6', other), { recursive: true, force: true });
  }
  if (!existsSync(join(binDir, 'onnxruntime_binding.node'))) fail(`no onnxruntime-node binding in ${binDir}`);
}

function install() {
  const spec = PROVIDERS[ortVersion];
  if (spec === undefined)
    fail(`no npm package is known to carry a CUDA provider for onnxruntime ${ortVersion}; ${official}`);
  const installed = FILES.every((f) => existsSync(join(binDir, f)));
  if (installed && !flag('force')) {
    const same = FILES.every((f) => sha256(join(binDir, f)) === spec.sha256[f]);
    if (same) {
      say(
        `the CUDA provider for onnxruntime ${ortVersion} is already installed in ${binDir} (--force reinstalls); ${useIt}`,
      );
      return;
    }
    say(`replacing other provider libraries in ${binDir}`);
  }
  const tmp = mkdtempSync(join(tmpdir(), 'setup-cuda-'));
  try {
    let srcDir;
    const from = option('from');
    if (from !== undefined && statSync(from).isDirectory()) {
      srcDir = from;
      say(`taking the provider libraries from ${from}`);
    } else {
      let tgz = from;
      if (tgz === undefined) {
        say(`downloading ${spec.package}@${spec.version} from the npm registry (about 180 MB) ...`);
        const r = spawnSync('npm', ['pack', `${spec.package}@${spec.version}`, '--pack-destination', tmp, '--silent'], {
          cwd: tmp,
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        if (r.status !== 0) fail(`npm pack ${spec.package}@${spec.version} failed (exit ${r.status})`);
        tgz = join(tmp, r.stdout.trim().split('\n').pop());
      }
      const members = FILES.map((f) => `${spec.dir}/${f}`);
      const t = spawnSync('tar', ['-xzf', tgz, '-C', tmp, ...members], { stdio: 'inherit' });
      if (t.status !== 0) fail(`could not extract ${members.join(', ')} from ${tgz}`);
      srcDir = join(tmp, spec.dir);
    }
    for (const f of FILES) {
      const src = join(srcDir, f);
      if (!existsSync(src)) fail(`${src} is missing`);
      const sum = sha256(src);
      if (sum !== spec.sha256[f]) {
        fail(`${src} is not the ${spec.package}@${spec.version} file (sha256 ${sum}, expected ${spec.sha256[f]})`);
      }
    }
    // The provider library carries the onnxruntime version it was built from; it must be onnxruntime-node's.
    const cudaLib = readFileSync(join(srcDir, 'libonnxruntime_providers_cuda.so'));
    if (cudaLib.indexOf(Buffer.from(`\0${ortVersion}\0`)) < 0) {
      fail(`libonnxruntime_providers_cuda.so does not name onnxruntime ${ortVersion}: not installing it`);
    }
    for (const f of FILES) {
      copyFileSync(join(srcDir, f), join(binDir, f));
      chmodSync(join(binDir, f), 0o755);
    }
    writeFileSync(
      join(binDir, MARKER),
      JSON.stringify(
        {
          onnxruntime: ortVersion,
          package: `${spec.package}@${spec.version}`,
          cuda: spec.cuda,
          sha256: spec.sha256,
          installed: new Date().toISOString(),
        },
        null,
        1,
      ) + '\n',
    );
    say(
      `installed ${FILES.join(' and ')} (onnxruntime ${ortVersion}, from ${spec.package}@${spec.version}; ` +
        `sha256 and version string checked) into ${binDir}`,
    );
    say(`they need ${spec.cuda} and the NVIDIA driver (libcuda.so.1); ${useIt}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Starts a one-node session on the CUDA provider in a child process (a failed load must not take this one down). */
function check() {
  const code = `
    const ort = require(${JSON.stringify(ortPkgDir)});
    (async () => {
      const s = await ort.InferenceSession.create(Buffer.from(${JSON.stringify(PROBE_MODEL)}, 'base64'),
        { executionProviders: ['cuda'], logSeverityLevel: 3 });
      const one = new ort.Tensor('float32', Float32Array.of(1), [1]);
      const y = (await s.run({ a: one, b: one })).y.data[0];
      if (y !== 2) throw new Error('probe returned ' + y);
      console.log('ok');
    })().catch((e) => { console.error('PROBE-ERROR ' + e.message); process.exit(3); });`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 120_000 });
  if (r.status === 0 && r.stdout.includes('ok')) {
    say('check: the CUDA provider starts and runs on this machine');
    return true;
  }
  const out = `${r.stderr ?? ''}`;
  const ortMessage = /PROBE-ERROR (.*)/.exec(out)?.[1] ?? `exit ${r.status ?? r.signal}`;
  const missing = [
    ...new Set([...out.matchAll(/([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file/g)].map((m) => m[1])),
  ];
  say(`check: the CUDA provider does not start here: ${ortMessage}`);
  if (missing.length > 0) {
    say(`the dynamic loader cannot find ${missing.join(', ')}`);
    const where = findLibraries(missing);
    const dirs = [...new Set(Object.values(where).flat())];
    for (const m of missing)
      say(`  ${m}: ${where[m]?.length ? `found in ${where[m].join(', ')}` : 'not found on this machine'}`);
    if (dirs.length > 0) say(`try: export LD_LIBRARY_PATH=${dirs.join(':')}\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}`);
    else if (missing.some((m) => m.startsWith('libonnxruntime_providers')))
      say('install the provider first (npm run setup:cuda)');
    else
      say(
        'install the CUDA 13 runtime libraries (CUDA toolkit, or pip wheels nvidia-cublas, nvidia-cuda-runtime, nvidia-curand) and the NVIDIA driver',
      );
  } else {
    const tail = out
      .split('\n')
      .filter((l) => l.trim() && !l.includes('PROBE-ERROR'))
      .slice(-3);
    for (const l of tail) say(`  ${l.trim()}`);
  }
  return false;
}

/** Where copies of `names` are on this machine: CUDA toolkit folders, the system's, and Python wheels' nvidia/*\/lib. */
function findLibraries(names) {
  const candidates = new Set(['/usr/lib/x86_64-linux-gnu', '/usr/local/nvidia/lib64', '/usr/lib/wsl/lib']);
  const ls = (d) => {
    try {
      return readdirSync(d);
    } catch {
      return [];
    }
  };
  for (const d of ls('/usr/local')) {
    if (d.startsWith('cuda'))
      for (const sub of ['lib64', 'lib', 'targets/x86_64-linux/lib']) candidates.add(join('/usr/local', d, sub));
  }
  const pyRoots = ['/usr/lib', '/usr/local/lib', join(homedir(), '.local/lib')];
  for (const d of ls('/opt')) pyRoots.push(join('/opt', d, '.venv/lib'), join('/opt', d, 'lib'));
  if (process.env.VIRTUAL_ENV) pyRoots.push(join(process.env.VIRTUAL_ENV, 'lib'));
  if (process.env.CONDA_PREFIX) pyRoots.push(join(process.env.CONDA_PREFIX, 'lib'));
  for (const r of pyRoots) {
    for (const py of ls(r).filter((d) => d.startsWith('python3'))) {
      for (const pkgs of ['site-packages', 'dist-packages']) {
        const nv = join(r, py, pkgs, 'nvidia');
        for (const sub of ls(nv)) {
          candidates.add(join(nv, sub, 'lib'));
          for (const sub2 of ls(join(nv, sub))) candidates.add(join(nv, sub, sub2, 'lib'));
        }
      }
    }
  }
  const found = {};
  for (const n of names) found[n] = [...candidates].filter((d) => existsSync(join(d, n)));
  return found;
}

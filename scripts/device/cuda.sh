#!/usr/bin/env bash
# On the GPU machine, after scripts/device/cuda-prepare.sh here and the carry calls (each `run` carries at most 64
# MiB, a warm machine keeps ignored files between calls):
#   (full mode, 5 calls; short mode below) 1. carry .device-carry/node.xz .device-carry/node_modules.tar.xz .device-carry/debs .device-carry/setup.sh
#   2..4. carry .device-carry/cuda/part-aa, -ab, -ac (one a call; the command can be `ls -la .device-carry/cuda`)
#   5. carry .device-carry/cuda/part-ad .device-carry/cuda/libonnxruntime_providers_shared.so
#      .device-carry/ort129.tar.xz dist, and run this script: `bash scripts/device/cuda.sh`
#   6. right after, on the same warm machine: `bash scripts/device/cuda-perf.sh` (timings)
# It checks that onnxruntime's CUDA provider (1.29.0, CUDA 13, from npm) runs with onnxruntime-node 1.29.0 and not
# with the pinned 1.30.0, that scripts/setup-cuda.mjs installs it and names what is missing, and runs the engine's
# provider tests (CPU, WebGPU, CUDA), the engine test suite and `bench gpu-check` on 1.29.0. Logs go to $OUT/cuda.tar.
set -uo pipefail
R=$OUT/cuda
mkdir -p "$R"
step() { echo; echo "=== $*"; }
# Full mode: the provider in parts (cuda/part-*) and onnxruntime-node 1.29.0 as an overlay (ort129.tar.xz) on the
# pinned node_modules, 5 carry calls. Short mode (2 calls, when device time is short): node_modules129.tar.xz
# (node_modules with onnxruntime-node 1.29.0) and cuda/cuda-sm90.so.xz, the provider with its kernels for other GPUs
# than sm_90 zeroed (host code and sm_90 kernels byte-identical; no 1.30 check then).
for f in node.xz setup.sh cuda/libonnxruntime_providers_shared.so; do
  [[ -f .device-carry/$f ]] || { echo "missing .device-carry/$f (the machine changed between calls?)"; exit 2; }
done
if [[ -f .device-carry/cuda/part-aa ]]; then
  MODE=full
  for f in node_modules.tar.xz ort129.tar.xz cuda/part-ab cuda/part-ac cuda/part-ad; do
    [[ -f .device-carry/$f ]] || { echo "missing .device-carry/$f (the machine changed between calls?)"; exit 2; }
  done
else
  MODE=short
  for f in node_modules129.tar.xz cuda/cuda-sm90.so.xz; do
    [[ -f .device-carry/$f ]] || { echo "missing .device-carry/$f (the machine changed between calls?)"; exit 2; }
  done
  [[ -d node_modules ]] || tar -xJf .device-carry/node_modules129.tar.xz
fi
echo "mode: $MODE"
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose|^\s*$" ; }
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "CUDA 13 libraries on this machine"
ldconfig -p | grep -E "libcudart.so.13|libcublas(Lt)?.so.13|libcurand.so.10|libcuda.so.1" | sed 's/^\s*//'
find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' -o -name 'libcudart.so.13*' -o -name 'libcurand.so.10*' 2>/dev/null | sort
CUDA_LIB=""
for d in $(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13' -printf '%h\n' 2>/dev/null | sort -u); do
  if [[ -e $d/libcublas.so.13 && -e $d/libcudart.so.13 && -e $d/libcurand.so.10 ]]; then CUDA_LIB=$d; break; fi
done
# pip wheels keep each library in its own folder (nvidia/cu13/lib or nvidia/<name>/lib): gather the folders
if [[ -z $CUDA_LIB ]]; then
  CUDA_LIB=$(for n in libcublasLt.so.13 libcublas.so.13 libcudart.so.13 libcurand.so.10; do
    find /usr/local /opt /usr/lib -name "$n" -printf '%h\n' 2>/dev/null | head -1; done | sort -u | paste -sd:)
fi
ORIG_LD=${LD_LIBRARY_PATH:-}
CUDA_LD=$CUDA_LIB${ORIG_LD:+:$ORIG_LD}
echo "CUDA_LIB=$CUDA_LIB (LD_LIBRARY_PATH was: $ORIG_LD)"
echo "$CUDA_LD" >/tmp/cuda_lib

step "provider libraries"
mkdir -p /tmp/cudaprov
cp .device-carry/cuda/libonnxruntime_providers_shared.so /tmp/cudaprov/
if [[ $MODE == full ]]; then
  cat .device-carry/cuda/part-* | xz -dc >/tmp/cudaprov/libonnxruntime_providers_cuda.so
else
  xz -dc .device-carry/cuda/cuda-sm90.so.xz >/tmp/cudaprov/libonnxruntime_providers_cuda.so
fi
sha256sum /tmp/cudaprov/*.so
BIN=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
PROBE='const ort=require("onnxruntime-node");(async()=>{const m=Buffer.from("CAgSCmZlZGJpb3QtdHM6VgoVCgFhCgFiEgF5GgNhZGQiA0FkZDoAEgpjdWRhLXByb2JlWg8KAWESCgoICAESBAoCCAFaDwoBYhIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAR","base64");const s=await ort.InferenceSession.create(m,{executionProviders:["cuda"]});const one=new ort.Tensor("float32",Float32Array.of(1),[1]);console.log("cuda probe y =",(await s.run({a:one,b:one})).y.data[0]);})().catch(e=>{console.log("cuda probe error:",e.message);process.exit(3)})'

if [[ $MODE == full ]]; then
step "onnxruntime-node as pinned + the 1.29.0 provider"
  strings $BIN/libonnxruntime.so.1 | grep -E '^1\.[0-9]+\.[0-9]+$' | head -3
  cp /tmp/cudaprov/*.so $BIN/
  LD_LIBRARY_PATH=$CUDA_LD timeout 120 node -e "$PROBE" 2>&1 | tail -5
  echo "exit: ${PIPESTATUS[0]}"
  LD_LIBRARY_PATH=$CUDA_LD timeout 60 node dist/bench/run.js gpu-check --provider cuda --out $R/gc-130 2>&1 | q | tail -12
  echo "gpu-check exit: ${PIPESTATUS[0]}"
  rm -f $BIN/libonnxruntime_providers_*.so
  
  step "switch to onnxruntime-node 1.29.0"
  rm -rf node_modules/onnxruntime-node node_modules/onnxruntime-common
  tar -xJf .device-carry/ort129.tar.xz
  node -p 'const v = (p) => JSON.parse(require("fs").readFileSync("node_modules/" + p + "/package.json", "utf8")).version;
    "onnxruntime-node " + v("onnxruntime-node") + ", onnxruntime-common " + v("onnxruntime-common")'
fi

step "setup:cuda without LD_LIBRARY_PATH (--from the carried copy)"
node scripts/setup-cuda.mjs --from /tmp/cudaprov 2>&1
if [[ $MODE == short ]]; then
  echo "(short mode: the sm_90-only copy fails setup:cuda's sha256 check, as it should; installed by hand)"
  cp /tmp/cudaprov/*.so $BIN/
  echo '{"onnxruntime":"1.29.0","package":"sm_90-only copy of com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9"}' \
    >$BIN/libonnxruntime_providers_cuda.install.json
  node scripts/setup-cuda.mjs --check 2>&1
else
  step "setup:cuda again (already installed), then --check with LD_LIBRARY_PATH"
  node scripts/setup-cuda.mjs --from /tmp/cudaprov 2>&1
fi
LD_LIBRARY_PATH=$CUDA_LD node scripts/setup-cuda.mjs --check 2>&1
echo "check exit: $?"
export LD_LIBRARY_PATH=$CUDA_LD

step "engine provider tests on 1.29.0: CPU, WebGPU and CUDA required"
FEDBIOT_TEST_PROVIDERS=cuda,webgpu timeout 120 node --test dist/libs/engine/test/runtime-providers.test.js 2>&1 |
  tee $R/providers-test.log | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|worst|falling back|not ok|Error" | head -40
step "same, NVIDIA_TF32_OVERRIDE=1 (TF32 allowed: for the record)"
NVIDIA_TF32_OVERRIDE=1 FEDBIOT_TEST_PROVIDERS=cuda timeout 60 node --test --test-name-pattern="training-graph" \
  dist/libs/engine/test/runtime-providers.test.js 2>&1 | grep -E "^(not )?ok|worst|relative L2" | grep -v "does not match" | head -8
step "a missing CUDA library, as a user sees it (LD_LIBRARY_PATH without the CUDA folder)"
LD_LIBRARY_PATH=$ORIG_LD node -e '
  import("./dist/libs/engine/src/runtime/index.js").then(async (m) => {
    try { await m.resolveProvider("cuda", { fallback: false }); console.log("cuda works without LD_LIBRARY_PATH"); }
    catch (e) { console.log(e.name + ": " + e.message); }
  });' 2>&1 | grep -v "^\[" | tail -3

# QUICK=1 (little device time left): stop after the provider tests and the missing-library message.
[[ ${QUICK:-0} == 1 ]] && { tar -C "$OUT" -cf "$OUT/cuda.tar" cuda; exit 0; }

step "engine test suite on 1.29.0 (CPU)"
timeout 120 node --test dist/libs/engine/test/*.test.js 2>&1 | tee $R/engine-tests.log | grep -E "^# (tests|pass|fail|skipped)|^not ok"

step "bench gpu-check on 1.29.0: cuda (TF32 off, then default), webgpu"
NVIDIA_TF32_OVERRIDE=0 timeout 90 node dist/bench/run.js gpu-check --provider cuda --out $R/gc-cuda 2>&1 | q | tail -10
timeout 60 node dist/bench/run.js gpu-check --provider cuda --out $R/gc-cuda-tf32default 2>&1 | q | tail -10
timeout 60 node dist/bench/run.js gpu-check --provider webgpu --out $R/gc-webgpu 2>&1 | q | tail -10
tar -C "$OUT" -cf "$OUT/cuda.tar" cuda && rm -rf "$R"

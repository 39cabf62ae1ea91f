#!/usr/bin/env bash
# On the GPU machine: the CUDA provider through the side-by-side binding that `npm run setup:cuda` installs
# (onnxruntime-node 1.29.0 + Microsoft's CUDA 13 provider under .cache/onnxruntime-cuda, selected per process with
# FEDBIOT_ORT_BINDING=cuda), and WebGPU on the pinned onnxruntime-node 1.30.0, in one call on one card:
#   provider tests (CUDA required on the side binding, WebGPU required on the pin), the missing-library message,
#   `bench perf` for SmolLM-135M and TinyLlama-1.1B on CUDA (TF32 off, onnxruntime's default TF32, float16 weights)
#   with each run's GPU memory peak, and the PyTorch peer (fp32, TF32, bfloat16 weights); perf-cuda.json is the
#   joined table. Packed into $OUT/cuda-side.tar.
# What travels: see scripts/device/cuda-carry.sh (3 back-to-back calls; this script is the third call's command).
# MODELS (default "smollm tinyllama"), WEBGPU=1 adds the WebGPU perf rows, QUICK=1 runs the tests only.
set -uo pipefail
R=$OUT/cuda-side
mkdir -p "$R"
source scripts/device/cuda-env.sh

step "setup:cuda --check (finds the side binding because the pin has no npm provider)"
LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD} node scripts/setup-cuda.mjs --check 2>&1
echo "check exit: $?"
export LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD}

step "provider tests: CUDA required, FEDBIOT_ORT_BINDING=cuda (onnxruntime-node 1.29.0)"
FEDBIOT_ORT_BINDING=cuda FEDBIOT_TEST_PROVIDERS=cuda timeout 120 node --test dist/libs/engine/test/runtime-providers.test.js 2>&1 |
  tee "$R/providers-cuda.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|worst|relative" | head -30
step "provider tests: WebGPU required, pinned binding (onnxruntime-node 1.30.0)"
FEDBIOT_TEST_PROVIDERS=webgpu timeout 120 node --test dist/libs/engine/test/runtime-providers.test.js 2>&1 |
  tee "$R/providers-webgpu.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|worst|relative" | head -30
step "cuda asked for on the pinned binding, as a user sees it"
node --input-type=module -e '
  const m = await import("./dist/libs/engine/src/runtime/index.js");
  try { await m.resolveProvider("cuda", { fallback: false }); console.log("cuda works on the pin?"); }
  catch (e) { console.log(e.name + ": " + e.message); }' 2>&1 | grep -v "^\[" | tail -2

step "dropout masks built on the GPU equal the host's (CUDA on the side binding)"
FEDBIOT_ORT_BINDING=cuda FEDBIOT_TEST_PROVIDERS=cuda timeout 120 node --test dist/libs/engine/test/dropout-mask.test.js 2>&1 |
  tee "$R/dropout-cuda.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)" | head -10

step "half-precision frozen weights: GPU parity (CUDA on the side binding, WebGPU on the pin)"
FEDBIOT_ORT_BINDING=cuda FEDBIOT_TEST_PROVIDERS=cuda timeout 150 node --test dist/libs/model/test/half-weights-providers.test.js 2>&1 |
  tee "$R/half-cuda.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|relative|worst" | head -20
FEDBIOT_TEST_PROVIDERS=webgpu timeout 150 node --test dist/libs/model/test/half-weights-providers.test.js 2>&1 |
  tee "$R/half-webgpu.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|relative|worst" | head -20

[[ ${QUICK:-0} == 1 ]] && { tar -C "$OUT" -cf "$OUT/cuda-side.tar" cuda-side; exit 0; }

step "bench perf, one model at a time with its GPU memory peak: CUDA fp32 (TF32 off), CUDA default (TF32), float16 weights"
for m in ${MODELS:-smollm tinyllama}; do
  NVIDIA_TF32_OVERRIDE=0 FEDBIOT_ORT_BINDING=cuda gpu_peak "$R/fp32-$m" timeout 200 node dist/bench/run.js perf \
    --provider cuda --models $m --out "$R/fp32-$m" 2>&1 | q | grep -E "^\| $m|peak GPU"
  FEDBIOT_ORT_BINDING=cuda gpu_peak "$R/tf32-$m" timeout 200 node dist/bench/run.js perf --provider cuda \
    --models $m --out "$R/tf32-$m" 2>&1 | q | grep -E "^\| $m|peak GPU"
  FEDBIOT_ORT_BINDING=cuda gpu_peak "$R/fp16-$m" timeout 200 node dist/bench/run.js perf --provider cuda \
    --models $m --weights-dtype float16 --out "$R/fp16-$m" 2>&1 | q | grep -E "^\| $m|peak GPU"
done
[[ ${WEBGPU:-0} == 1 ]] && timeout 200 node dist/bench/run.js perf --provider webgpu --models smollm,tinyllama \
  --out "$R/webgpu" 2>&1 | q | tail -9
step "PyTorch peer: fp32, TF32, bfloat16 weights"
for prec in fp32 tf32 bf16; do
  PEER_PRECISION=$prec timeout 150 python3 scripts/device/torch_peer.py "$R/peer-$prec.json" smollm-cuda tinyllama-cuda \
    2>&1 | grep -v Warning | tail -2
done
node -e '
  const fs = require("fs"); const R = process.argv[1]; const ours = []; const peer = [];
  const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8")); } catch { return []; } };
  const peak = (d) => { try { return Number(fs.readFileSync(d + "/gpu-peak-mib.txt", "utf8")); } catch { return null; } };
  for (const d of fs.readdirSync(R)) {
    const m = /^(fp32|tf32|fp16)-/.exec(d);
    if (m) for (const r of read(R + "/" + d + "/perf-ours.json"))
      ours.push({ ...r, provider: { fp32: "cuda", tf32: "cuda-tf32", fp16: "cuda-fp16" }[m[1]], peak_gpu_mib: peak(R + "/" + d) });
  }
  for (const r of read(R + "/webgpu/perf-ours.json")) ours.push(r);
  for (const p of ["fp32", "tf32", "bf16"]) peer.push(...read(R + "/peer-" + p + ".json"));
  fs.writeFileSync(R + "/perf-ours.json", JSON.stringify(ours, null, 1));
  fs.writeFileSync(R + "/peer.json", JSON.stringify(peer, null, 1));' "$R"
node scripts/device/perf-join.mjs "$R/perf-ours.json" "$R/peer.json" "$R/perf-cuda.json"
tar -C "$OUT" -cf "$OUT/cuda-side.tar" cuda-side

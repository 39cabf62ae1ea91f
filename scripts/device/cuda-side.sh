#!/usr/bin/env bash
# On the GPU machine: the CUDA provider through the side-by-side binding that `npm run setup:cuda` installs
# (onnxruntime-node 1.29.0 + Microsoft's CUDA 13 provider under .cache/onnxruntime-cuda, selected per process with
# FEDBIOT_ORT_BINDING=cuda), and WebGPU on the pinned onnxruntime-node 1.30.0, in one call on one card:
#   provider tests (CUDA required on the side binding, WebGPU required on the pin), the missing-library message,
#   `bench perf` for SmolLM-135M and TinyLlama-1.1B on CUDA (TF32 off, then onnxruntime's default) and WebGPU, and
#   the PyTorch peer; bench/results/perf-cuda.json is the joined table. Packed into $OUT/cuda-side.tar.
# What travels (each call carries at most 64 MiB with the working tree; a warm machine keeps ignored files):
#   here: ../shared/device/pack.sh, then
#     mkdir -p .device-carry/side && tar -C .cache/onnxruntime-cuda -cf - node_modules | xz -T2 -9 |
#       split -b 36000000 - .device-carry/side/part-
#   call 1: carry .device-carry/node.xz .device-carry/debs .device-carry/setup.sh .device-carry/node_modules.tar.xz
#   calls 2..: carry .device-carry/side/part-a? (one or two a call; the command can be `ls -la .device-carry/side`)
#   last call: carry dist and the last part, command `bash scripts/device/cuda-side.sh` (QUICK=1: tests only)
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

step "half-precision frozen weights: GPU parity (CUDA on the side binding, WebGPU on the pin)"
FEDBIOT_ORT_BINDING=cuda FEDBIOT_TEST_PROVIDERS=cuda timeout 150 node --test dist/libs/model/test/half-weights-providers.test.js 2>&1 |
  tee "$R/half-cuda.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|relative|worst" | head -20
FEDBIOT_TEST_PROVIDERS=webgpu timeout 150 node --test dist/libs/model/test/half-weights-providers.test.js 2>&1 |
  tee "$R/half-webgpu.log" | grep -E "^(not )?ok|^# (tests|pass|fail|skipped)|relative|worst" | head -20

[[ ${QUICK:-0} == 1 ]] && { tar -C "$OUT" -cf "$OUT/cuda-side.tar" cuda-side; exit 0; }

step "bench perf: CUDA fp32 (TF32 off), CUDA TF32 (default), WebGPU on the pin, PyTorch"
NVIDIA_TF32_OVERRIDE=0 FEDBIOT_ORT_BINDING=cuda timeout 200 node dist/bench/run.js perf --provider cuda \
  --models smollm,tinyllama --out "$R/fp32" 2>&1 | q | tail -9
FEDBIOT_ORT_BINDING=cuda timeout 200 node dist/bench/run.js perf --provider cuda --models smollm,tinyllama \
  --out "$R/tf32" 2>&1 | q | tail -9
timeout 200 node dist/bench/run.js perf --provider webgpu --models smollm,tinyllama --out "$R/webgpu" 2>&1 | q | tail -9
FEDBIOT_ORT_BINDING=cuda timeout 200 node dist/bench/run.js perf --provider cuda --models smollm,tinyllama \
  --weights-dtype float16 --out "$R/fp16" 2>&1 | q | tail -9
timeout 150 python3 scripts/device/torch_peer.py "$R/peer.json" smollm-cuda tinyllama-cuda 2>&1 | grep -v Warning | tail -3
node -e '
  const fs = require("fs"); const R = process.argv[1]; const rows = [];
  const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8")); } catch { return []; } };
  for (const r of read(R + "/fp32/perf-ours.json")) rows.push({ ...r, provider: "cuda" });
  for (const r of read(R + "/tf32/perf-ours.json")) rows.push({ ...r, provider: "cuda-tf32" });
  for (const r of read(R + "/webgpu/perf-ours.json")) rows.push(r);
  for (const r of read(R + "/fp16/perf-ours.json")) rows.push({ ...r, provider: "cuda-fp16" });
  fs.writeFileSync(R + "/perf-ours.json", JSON.stringify(rows, null, 1));' "$R"
node scripts/device/perf-join.mjs "$R/perf-ours.json" "$R/peer.json" "$R/perf-cuda.json"
tar -C "$OUT" -cf "$OUT/cuda-side.tar" cuda-side

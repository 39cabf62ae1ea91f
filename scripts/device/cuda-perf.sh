#!/usr/bin/env bash
# On the GPU machine, right after scripts/device/cuda.sh on the same warm machine (it leaves node, onnxruntime-node
# 1.29.0 with the CUDA provider installed, and the CUDA library folder in /tmp/cuda_lib): the FedBiOT steps of
# `npm run bench -- perf` on the CUDA provider (float32), WebGPU, the PyTorch peer, and CUDA with TF32 allowed (SmolLM), all
# in one call on one card; bench/results/perf-cuda.json is the joined table. Packed into $OUT/perf-cuda.tar.
set -uo pipefail
[[ -f /tmp/cuda_lib && -x /tmp/node/bin/node ]] || { echo "run scripts/device/cuda.sh first on this machine"; exit 1; }
source /tmp/node/env
export LD_LIBRARY_PATH=$(cat /tmp/cuda_lib) FEDBIOT_CACHE=/tmp/fedbiot-cache PYTHONUNBUFFERED=1
R=$OUT/perf
mkdir -p $R
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose" ; }
nvidia-smi --query-gpu=name --format=csv,noheader
node -p '"onnxruntime-node " + require("onnxruntime-node/package.json").version'
# cuBLAS runs float32 GEMMs in TF32 when asked to; NVIDIA_TF32_OVERRIDE=0 forbids it (PyTorch's default is float32).
NVIDIA_TF32_OVERRIDE=0 timeout 180 node dist/bench/run.js perf --provider cuda --models smollm,tinyllama --out $R/fp32 2>&1 | q | tail -9
timeout 120 python3 scripts/device/torch_peer.py $R/peer.json smollm-cuda tinyllama-cuda 2>&1 | grep -v Warning | tail -3
timeout 180 node dist/bench/run.js perf --provider webgpu --models smollm,tinyllama --out $R/webgpu 2>&1 | q | tail -9
timeout 90 node dist/bench/run.js perf --provider cuda --models smollm --out $R/tf32 2>&1 | q | tail -6
node -e '
  const fs = require("fs"); const R = process.argv[1]; const rows = [];
  const read = (f) => { try { return JSON.parse(fs.readFileSync(f, "utf8")); } catch { return []; } };
  for (const r of read(R + "/fp32/perf-ours.json")) rows.push({ ...r, provider: "cuda" });
  for (const r of read(R + "/tf32/perf-ours.json")) rows.push({ ...r, provider: "cuda-tf32" });
  for (const r of read(R + "/webgpu/perf-ours.json")) rows.push(r);
  fs.writeFileSync(R + "/perf-ours.json", JSON.stringify(rows, null, 1));' $R
node scripts/device/perf-join.mjs $R/perf-ours.json $R/peer.json $R/perf-cuda.json
tar -C $OUT -cf $OUT/perf-cuda.tar perf && rm -rf $R

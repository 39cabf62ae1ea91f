#!/usr/bin/env bash
# On the GPU machine, after the carry calls of cuda-carry.sh: where a CUDA client step's
# time goes, ours against PyTorch's on the same card in one call.
#   - `bench profile` with CUDA_LAUNCH_BLOCKING=1: every kernel launch waits for the kernel, so onnxruntime's per-node
#     times become kernel times (plus launch latency); then without it, for the step's wall time against the time
#     inside onnxruntime's run call (what remains is our host work: feeds, dropout masks, AdamW);
#   - `bench perf` client steps with LoRA dropout 0 and 0.05 (the masks' cost), worker and main thread;
#   - the PyTorch peer with PEER_PROFILE=1 (its kernels by class, from torch.profiler).
# MODELS (default smollm,tinyllama). Results under $OUT/cuda-profile.
set -uo pipefail
R=$OUT/cuda-profile
mkdir -p "$R"
source scripts/device/cuda-env.sh
export LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD} FEDBIOT_ORT_BINDING=cuda
MODELS=${MODELS:-smollm,tinyllama}
run() { timeout "$1" node dist/bench/run.js "${@:2}" 2>&1 | q; }

step "PyTorch (CUDA fp32), kernels by class"
PEER_PROFILE=1 timeout 150 python3 scripts/device/torch_peer.py "$R/peer.json" smollm-cuda tinyllama-cuda 2>&1 |
  grep -v Warning | tail -80
step "ours: profile with CUDA_LAUNCH_BLOCKING=1 (node times are kernel times)"
CUDA_LAUNCH_BLOCKING=1 run 200 profile --provider cuda --models "$MODELS" --steps 2 --out "$R/blocking" | tail -70
step "ours: profile, asynchronous (wall time vs inside the run call)"
run 150 profile --provider cuda --models "$MODELS" --steps 3 --out "$R/async" | grep -E "total|wrote"
step "ours: client steps, LoRA dropout 0 / 0.05, worker / main thread"
for p in 0 0.05; do
  run 150 perf --provider cuda --models "$MODELS" --skip-align --lora-dropout $p --out "$R/perf-d$p" | tail -6
done
run 150 perf --provider cuda --models "$MODELS" --skip-align --thread main --out "$R/perf-main" | tail -6

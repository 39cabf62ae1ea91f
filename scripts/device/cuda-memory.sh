#!/usr/bin/env bash
# On the GPU machine, after the carry calls of cuda-carry.sh: the client step's GPU memory peak (nvidia-smi, the
# whole card) and time, one process per case (client step only, 10 steps): onnxruntime's defaults (TF32), TF32 off,
# LoRA dropout 0 (what the masks still cost), and the client and alignment steps in one process. Results under
# $OUT/cuda-memory. (On 2026-12-05 it also compared the weights inside and outside onnxruntime's CUDA arena, session
# config use_device_allocator_for_initializers: the same peaks, 8325 and 3163 MiB, so that option was not kept.)
set -uo pipefail
R=$OUT/cuda-memory
mkdir -p "$R"
source scripts/device/cuda-env.sh
export LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD} FEDBIOT_ORT_BINDING=cuda
perf() { local d=$1 m=$2; shift 2; gpu_peak "$R/$d" timeout 150 node dist/bench/run.js perf --provider cuda --models $m \
  --client-only --out "$R/$d" "$@" 2>&1 | q | grep -E "^\| [a-z]|peak GPU" | grep -v "^| case"; }
for m in tinyllama smollm; do step "$m client step"; perf $m $m --skip-align --steps 10; done
step "tinyllama client step, TF32 off"
NVIDIA_TF32_OVERRIDE=0 perf tinyllama-fp32 tinyllama --skip-align --steps 10
step "tinyllama client step, LoRA dropout 0"
perf tinyllama-d0 tinyllama --skip-align --steps 10 --lora-dropout 0
step "tinyllama client step and alignment step in one process"
perf tinyllama-align tinyllama --steps 5

#!/usr/bin/env bash
# On the GPU machine, after the carry calls of cuda-carry.sh (same layout as cuda-side.sh): a LLaMA-2-7B-shaped model
# (random weights) as FedBiOT runs it on one GPU: the client step on the emulator and the server's alignment step, the
# frozen weights in bfloat16 with float16 matmuls and activations (ACT=float32 for float16 matmuls only), with the GPU
# memory peak; PyTorch with bfloat16 weights on the same
# card. Results under $OUT/cuda-7b.
set -uo pipefail
R=$OUT/cuda-7b
mkdir -p "$R"
source scripts/device/cuda-env.sh
export LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD}
df -h /tmp | tail -1
step "ours: LLaMA-2-7B client step and alignment step, bfloat16 frozen weights"
FEDBIOT_ORT_BINDING=cuda gpu_peak "$R/ours" timeout ${OURS_S:-420} node dist/bench/run.js perf --provider cuda \
  --models llama7b --weights-dtype bfloat16 --activations ${ACT:-float16} --client-only --steps ${STEPS:-2} --out "$R/ours" 2>&1 | q | tail -8
step "PyTorch: LLaMA-2-7B client step, bfloat16 weights"
PEER_PRECISION=bf16 gpu_peak "$R/peer" timeout 150 python3 scripts/device/torch_peer.py "$R/peer.json" llama7b-cuda 2>&1 |
  grep -v Warning | tail -2

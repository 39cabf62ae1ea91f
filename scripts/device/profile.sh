#!/usr/bin/env bash
# On the GPU machine: where the FedBiOT client step's time goes (npm run bench -- profile) for SmolLM-135M and
# TinyLlama-1.1B on WebGPU and SmolLM-135M on the CPU provider (16 threads): per op class and op, per provider,
# CPU-placed nodes and host-device copies as their own rows. Results in $OUT/profile/*.json.
set -uo pipefail
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache
R=$OUT/profile; mkdir -p "$R/webgpu" "$R/cpu"
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose" ; }
node dist/bench/run.js profile --provider webgpu --models smollm,tinyllama --steps 3 --out "$R/webgpu" 2>&1 | q | tail -45
node dist/bench/run.js profile --provider cpu --models smollm --steps 3 --out "$R/cpu" 2>&1 | q | tail -22

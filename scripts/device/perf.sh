#!/usr/bin/env bash
# On the GPU machine, in one call: our FedBiOT client and alignment steps (npm run bench -- perf) on the CPU provider
# (16 threads) and WebGPU, the PyTorch peer on the same shapes, and the comparison table bench/results/perf.json
# (ours, peer, ratio), packed into $OUT/perf.tar.
set -uo pipefail
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache PYTHONUNBUFFERED=1
R=$OUT/perf; mkdir -p $R
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose" ; }
node dist/bench/run.js perf --provider webgpu --models smollm,tinyllama --out $R 2>&1 | q | tail -12
node dist/bench/run.js perf --provider cpu --models smollm --out $R 2>&1 | q | tail -8
python3 scripts/device/torch_peer.py $R/peer.json smollm-cuda tinyllama-cuda smollm-cpu16 2>&1 | grep -v Warning | tail -4
node scripts/device/perf-join.mjs $R/perf-ours.json $R/peer.json $R/perf.json
tar -C $OUT -cf $OUT/perf.tar perf && rm -rf $R

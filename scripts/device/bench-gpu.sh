#!/usr/bin/env bash
# On the GPU machine, in one call: our benchmarks (engine, model) on the CPU provider (16 and 2 threads) and the
# WebGPU provider, and the PyTorch peer on the same shapes; results packed into $OUT/results.tar.
set -uo pipefail
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache PYTHONUNBUFFERED=1
R=$OUT/results; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose" ; }
node dist/bench/run.js engine --provider cpu --large --out $R 2>&1 | q | tail -6
node dist/bench/run.js engine --provider webgpu --large --out $R 2>&1 | q | tail -6
node dist/bench/run.js model --provider webgpu --out $R 2>&1 | q | tail -7
node dist/bench/run.js model --provider cpu --out $R 2>&1 | q | tail -7
python3 scripts/device/torch_peer.py $R/peer.json block smollm-cuda smollm-cpu16 2>&1 | grep -v Warning | tail -5
node dist/bench/run.js model --provider cpu --threads 2 --steps 2 --out $R/t2 2>&1 | q | tail -7
python3 scripts/device/torch_peer.py $R/peer-cpu2.json smollm-cpu2 2>&1 | grep -v Warning | tail -3
tar -C $OUT -cf $OUT/results.tar results && rm -rf $R

#!/usr/bin/env bash
# On the GPU machine, after the carry calls of cuda-carry.sh (this script is the third call's command): float16
# activations (LoadOptions.activations, `bench perf --activations float16`) against the earlier modes and PyTorch, in
# one call on one card:
#   the GPU parity tests of half weights and float16 activations (CUDA required);
#   per model: ours TF32 (the earlier best), float16 weights + float16 activations (with the alignment step), bfloat16
#   weights + float16 activations, each in its own process with its GPU memory peak; then the PyTorch peer fp32 and
#   bf16 with its allocator peak; then onnxruntime's profile of the float16-activation client step with
#   CUDA_LAUNCH_BLOCKING=1 (kernel times) and without (wall time against the run call).
# MODELS (default "tinyllama smollm"). Results packed into $OUT/cuda-half.tar.
set -uo pipefail
R=$OUT/cuda-half
mkdir -p "$R"
source scripts/device/cuda-env.sh
export LD_LIBRARY_PATH=$CUDA_LIB${ORIG_LD:+:$ORIG_LD} FEDBIOT_ORT_BINDING=cuda
pack() { tar -C "$OUT" -cf "$OUT/cuda-half.tar" cuda-half; }
trap pack EXIT
MODELS=${MODELS:-tinyllama smollm}
perf() { local dir=$1; shift; gpu_peak "$R/$dir" timeout "${PERF_S:-150}" node dist/bench/run.js perf --provider cuda --out "$R/$dir" "$@" 2>&1 | q | grep -E "^\| [a-z]|peak GPU"; }

step "GPU parity: half weights and float16 activations on CUDA"
FEDBIOT_TEST_PROVIDERS=cuda timeout 120 node --test --test-name-pattern=cuda dist/libs/model/test/half-weights-providers.test.js 2>&1 |
  tee "$R/half-cuda.log" | grep -E "^(not )?ok|^# (tests|pass|fail)|vs cpu" | head -12

for m in $MODELS; do
  step "$m: ours, TF32 (earlier best), float16 weights + activations, bfloat16 weights + activations"
  perf "tf32-$m" --models $m --skip-align
  perf "f16a16-$m" --models $m --weights-dtype float16 --activations float16
  perf "bf16a16-$m" --models $m --weights-dtype bfloat16 --activations float16 --skip-align
done
step "PyTorch peer: fp32, bf16 weights"
for prec in fp32 bf16; do
  PEER_PRECISION=$prec timeout 150 python3 scripts/device/torch_peer.py "$R/peer-$prec.json" smollm-cuda tinyllama-cuda \
    2>&1 | grep -v Warning | tail -2
done
step "profile of the float16-activation steps: kernel times (CUDA_LAUNCH_BLOCKING=1), then asynchronous"
CUDA_LAUNCH_BLOCKING=1 timeout 150 node dist/bench/run.js profile --provider cuda --models tinyllama \
  --weights-dtype float16 --activations float16 --steps 2 --out "$R/profile-blocking" 2>&1 | q | tail -40
timeout 100 node dist/bench/run.js profile --provider cuda --models tinyllama --weights-dtype float16 \
  --activations float16 --steps 3 --out "$R/profile-async" 2>&1 | q | grep -E "total|wrote|kernel|run call"

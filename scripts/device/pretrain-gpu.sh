#!/usr/bin/env bash
# On the GPU machine: checks training-graph gradients on WebGPU against the CPU provider, measures pretraining
# speed on WebGPU and on the 16-core CPU provider, then pretrains the demo model on the faster one with as many
# steps as fit the time budget, and packs results into $OUT.
set -uo pipefail
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache
nvidia-smi -L; node --version
mkdir -p $OUT/results
node dist/bench/run.js gpu-check --provider webgpu --out $OUT/results 2>&1 | grep -v -i "warn\|^\s*$" | tail -15
probe() { node dist/bin/pretrain.js --steps 30 --provider "$1" --out /tmp/probe-$1 --work /tmp/work-probe-$1 >/tmp/probe-$1.log 2>&1; node -e "const r=require('/tmp/probe-$1/pretrain.json'); console.log(r.seconds)"; }
tw=$(probe webgpu); tc=$(probe cpu)
echo "30-step probe (incl. setup): webgpu ${tw}s cpu ${tc}s"
best=$(node -e "console.log($tw < $tc ? 'webgpu' : 'cpu')")
per=$(node -e "console.log(Math.min($tw,$tc)/30)")
steps=$(node -e "console.log(Math.max(200, Math.min(6000, Math.floor(${BUDGET_S:-300}/$per/100)*100)))")
echo "pretraining on $best: $steps steps"
node dist/bin/pretrain.js --steps $steps --provider $best --out /tmp/demo-llama --work /tmp/work 2>&1 | tail -6
tar -C /tmp -cf $OUT/demo-llama.tar demo-llama
cp /tmp/probe-*.log $OUT/results/ 2>/dev/null
tar -C $OUT -cf $OUT/results.tar results && rm -rf $OUT/results

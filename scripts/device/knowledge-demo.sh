#!/usr/bin/env bash
# On the GPU machine (its 16 CPU cores and the GPU): rebuilds the knowledge demo model and measures the demo.
#   PHASE=pretrain (default): 30-step probes on the CPU provider (16 threads) and WebGPU, then `pretrain --demo deep`
#     on the faster one with as many steps (in hundreds, at most STEPS_MAX) as fit BUDGET_S seconds into .cache/demo-deep-new (ignored, so a warm machine keeps it), then the
#     knowledge probe (scripts/knowledge-probe.mjs); the model and logs go to $OUT.
#   PHASE=experiment: the new model (if this machine pretrained one) in place of models/demo-deep, then `experiment` on SPEC (default
#     experiments/demo-core.json) with PARALLEL single-thread runs (default 15); results to $OUT.
# What travels (at most 64 MiB a call with the working tree; a warm machine keeps ignored files for ~30 s idle):
#   here: ../shared/device/pack.sh; call 1 carries .device-carry/{node.xz,debs,setup.sh} (command: true),
#   call 2 carries .device-carry/node_modules.tar.xz and dist and runs this script; later calls carry dist only.
set -uo pipefail
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
export FEDBIOT_CACHE=/tmp/fedbiot-cache
nproc; node --version
case "${PHASE:-pretrain}" in
pretrain)
  probe() {
    node dist/bin/pretrain.js --demo deep --steps 30 --provider "$1" --threads "$2" --out /tmp/probe-$1 --work /tmp/work-probe-$1 \
      >/tmp/probe-$1.log 2>&1
    node -e "console.log(require('/tmp/probe-$1/pretrain.json').seconds)"
  }
  tc=$(probe cpu 16); tw=$(probe webgpu 1)
  echo "30-step probe incl. setup: cpu ${tc}s webgpu ${tw}s"
  best=$(node -e "console.log($tw < $tc ? 'webgpu' : 'cpu')"); threads=$([[ $best == cpu ]] && echo 16 || echo 1)
  per=$(node -e "console.log(Math.min($tw,$tc)/30)")
  STEPS=$(node -e "console.log(Math.max(200, Math.min(${STEPS_MAX:-4000}, Math.floor(${BUDGET_S:-330}/$per/100)*100)))")
  echo "pretraining on $best ($threads threads): $STEPS steps"
  rm -rf .cache/demo-deep-new
  node dist/bin/pretrain.js --demo deep --steps "$STEPS" --provider "$best" --threads "$threads" \
    --out .cache/demo-deep-new --work /tmp/work-deep 2>&1 | grep -v "^pretrain:" | tail -8
  node scripts/knowledge-probe.mjs .cache/demo-deep-new 2>&1 | tail -12
  tar -C .cache -cf "$OUT/demo-deep-new.tar" demo-deep-new
  cp /tmp/probe-*.log "$OUT/" 2>/dev/null
  ;;
experiment)
  # A model just pretrained on this machine replaces the committed one; else the committed one runs.
  [[ -f .cache/demo-deep-new/model.safetensors ]] && cp .cache/demo-deep-new/* models/demo-deep/
  spec=${SPEC:-experiments/demo-core.json}; name=$(basename "$spec" .json)
  node dist/bin/experiment.js --spec "$spec" --parallel "${PARALLEL:-15}" --out ".cache/exp-$name" ${ONLY:+--only "$ONLY"} 2>&1 |
    grep -v -E "evaluation:|local training:|alignment:" | tail -40
  tar -C .cache -cf "$OUT/exp-$name.tar" "exp-$name"
  ;;
esac

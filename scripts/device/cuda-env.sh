# Sourced by the GPU machine's CUDA scripts (cuda-side.sh, cuda-profile.sh): node and the pinned node_modules from
# ../shared/device/pack.sh's carry, the side binding (onnxruntime-node 1.29.0 + Microsoft's CUDA 13 provider, from
# .device-carry/side/part-*, see cuda-carry.sh for how they are made and carried), and CUDA 13's folder on
# LD_LIBRARY_PATH. Exports CUDA_LIB and FEDBIOT_CACHE; defines step() and q() for the scripts' logs.
step() { echo; echo "=== $*"; }
q() { grep -v -E "W:onnxruntime|VerifyEachNodeIsAssigned|Rerunning with verbose|^\s*$"; }
for f in node.xz setup.sh node_modules.tar.xz side/part-aa; do
  [[ -f .device-carry/$f ]] || { echo "missing .device-carry/$f (the machine changed between calls?)"; exit 2; }
done
bash .device-carry/setup.sh >/dev/null && source /tmp/node/env
[[ -d node_modules/onnxruntime-node ]] || tar -xJf .device-carry/node_modules.tar.xz
mkdir -p .cache/onnxruntime-cuda
[[ -d .cache/onnxruntime-cuda/node_modules/onnxruntime-node ]] ||
  cat .device-carry/side/part-* | xz -dc | tar -C .cache/onnxruntime-cuda -xf -
export FEDBIOT_CACHE=/tmp/fedbiot-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
node -p '"pinned onnxruntime-node " + require("onnxruntime-node/package.json").version'
node -p '"side binding " + require("./.cache/onnxruntime-cuda/node_modules/onnxruntime-node/package.json").version'
CUDA_LIB=""
for d in $(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13' -printf '%h\n' 2>/dev/null | sort -u); do
  if [[ -e $d/libcublas.so.13 && -e $d/libcudart.so.13 && -e $d/libcurand.so.10 ]]; then CUDA_LIB=$d; break; fi
done
echo "CUDA_LIB=$CUDA_LIB"
ORIG_LD=${LD_LIBRARY_PATH:-}
export CUDA_LIB
# gpu_peak DIR CMD...: runs CMD while sampling the GPU's used memory every 100 ms; writes the peak (MiB, the whole
# card, so run one job at a time) to DIR/gpu-peak-mib.txt. onnxruntime's CUDA arena keeps what it has grown to, so
# the peak is the most the process held.
gpu_peak() {
  local dir=$1; shift
  mkdir -p "$dir"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$dir/gpu-samples.txt" &
  local sampler=$!
  "$@"
  local rc=$?
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  sort -n "$dir/gpu-samples.txt" | tail -1 >"$dir/gpu-peak-mib.txt"
  echo "peak GPU memory: $(cat "$dir/gpu-peak-mib.txt") MiB"
  return $rc
}

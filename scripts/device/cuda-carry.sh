#!/usr/bin/env bash
# Here (not on the GPU machine), after `npm ci`, `npm run build` and `npm run setup:cuda`: writes what the CUDA runs
# on the GPU machine need under .device-carry/ (ignored by git):
#   node.xz, debs/, setup.sh, node_modules.tar.xz   ../shared/device/pack.sh (node, Vulkan loaders, node_modules)
#   side/part-a?                                    the side binding (.cache/onnxruntime-cuda/node_modules) with the
#                                                   CUDA provider reduced to its sm_90 kernels (cuda-sm90-only.py),
#                                                   xz, in 12 MB parts (50 MB in all, against 177 MB unreduced)
# One call carries at most 64 MiB with the working tree (about 30 MB), so they travel in 3 back-to-back calls (a warm
# machine keeps ignored files; it is released after 30 s idle):
#   1: .device-carry/node.xz .device-carry/debs .device-carry/setup.sh .device-carry/side/part-aa
#   2: .device-carry/node_modules.tar.xz .device-carry/side/part-ab .device-carry/side/part-ae
#   3: dist .device-carry/side/part-ac .device-carry/side/part-ad, command `bash scripts/device/cuda-side.sh`
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
bash ../shared/device/pack.sh
so=$(ls .cache/onnxruntime-cuda/node_modules/onnxruntime-node/bin/napi-v*/linux/x64/libonnxruntime_providers_cuda.so)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -a .cache/onnxruntime-cuda/node_modules "$tmp/"
python3 scripts/device/cuda-sm90-only.py "$so" "$tmp/${so#.cache/onnxruntime-cuda/}"
rm -rf "$tmp"/node_modules/onnxruntime-node/bin/napi-v*/{darwin,win32,linux/arm64}
mkdir -p .device-carry/side
rm -f .device-carry/side/part-*
tar -C "$tmp" -cf - node_modules | xz -T2 -9 | split -b 12000000 - .device-carry/side/part-
ls -la .device-carry/side

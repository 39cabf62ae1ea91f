#!/usr/bin/env bash
# Here (not on the GPU machine): prepares what the CUDA runs on the GPU machine need, under .device-carry/ (ignored):
#   cuda/part-*                        Microsoft's CUDA 13 provider for onnxruntime 1.29.0 (xz, split under 45 MB)
#   cuda/libonnxruntime_providers_shared.so
#   ort129.tar.xz                      onnxruntime-node 1.29.0 + onnxruntime-common 1.29.0 (linux x64 only)
# plus ../shared/device/pack.sh's node binary, Vulkan loaders and node_modules (onnxruntime-node as pinned).
# One call carries at most 64 MiB with the working tree (about 18 MB), so they travel in several back-to-back calls
# (a warm machine keeps ignored files): see scripts/device/cuda.sh for the order.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
out=$root/.device-carry
bash "$root/../shared/device/pack.sh" >/dev/null
mkdir -p "$out/cuda"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 --silent >/dev/null)
tar -xzf "$tmp"/com.github.asus4.onnxruntime.linux-x64-gpu-0.4.9.tgz -C "$tmp" \
  package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so package/Plugins/Linux/x64/libonnxruntime_providers_shared.so
cp "$tmp"/package/Plugins/Linux/x64/libonnxruntime_providers_shared.so "$out/cuda/"
rm -f "$out"/cuda/part-*
xz -9e -T1 -c "$tmp"/package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so | split -b 45000000 - "$out/cuda/part-"
mkdir -p "$tmp/ort" && echo '{"name":"x","version":"1.0.0","dependencies":{"onnxruntime-node":"1.29.0"}}' >"$tmp/ort/package.json"
(cd "$tmp/ort" && ONNXRUNTIME_NODE_INSTALL=skip npm install --ignore-scripts --omit=dev --no-audit --no-fund >/dev/null)
rm -rf "$tmp"/ort/node_modules/onnxruntime-node/bin/napi-v6/{darwin,win32,linux/arm64}
tar -C "$tmp/ort" -cf - node_modules/onnxruntime-node node_modules/onnxruntime-common | xz -9 -T2 >"$out/ort129.tar.xz"
du -b "$out"/cuda/* "$out"/ort129.tar.xz "$out"/node.xz "$out"/node_modules.tar.xz | sed "s|$root/||"

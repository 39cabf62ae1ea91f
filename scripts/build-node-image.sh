#!/usr/bin/env bash
# Builds a Node.js base image without a registry: this machine's node binary plus the shared
# libraries that node and onnxruntime-node's linux-x64 binaries link, CA certificates, and an
# /etc/passwd with an unprivileged user `node` (uid/gid 1000), imported with `docker import`.
#
# Usage: scripts/build-node-image.sh [TAG]        (default local/node:20)
#        FORCE=1 scripts/build-node-image.sh      rebuild even if TAG exists
# Needs: docker (a running daemon), node on PATH.
#
# Rebuilt only when missing (scripts/rootfs-image.sh says why): a new base ID would bust the app
# image's layer cache.
set -euo pipefail
# shellcheck source=rootfs-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/rootfs-image.sh"

TAG="${1:-local/node:20}"
NODE_BIN="$(readlink -f "${NODE_BIN:-$(command -v node)}")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

rootfs_skip_if_built build-node-image "$TAG"

rootfs_new
mkdir -p "$ROOT/usr/bin" "$ROOT/app" "$ROOT/home/node" "$ROOT/etc/ssl/certs"
chown 1000:1000 "$ROOT/home/node"
cp "$NODE_BIN" "$ROOT/usr/bin/node"

# Libraries: node's own, plus what onnxruntime-node's binding and libonnxruntime need (librt is
# only pulled in by ORT), so the ORT native addon loads in the image.
ORT_DIR="$REPO_ROOT/node_modules/onnxruntime-node/bin/napi-v6/linux/x64"
objects=("$NODE_BIN")
[[ -d "$ORT_DIR" ]] && objects+=("$ORT_DIR/libonnxruntime.so.1")
# shellcheck disable=SC2046 # one path a word
rootfs_add_libs $(ldd "${objects[@]}" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | grep -v "$REPO_ROOT" | sort -u)

cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
rootfs_user node /home/node

VERSION="$("$NODE_BIN" -v)"
rootfs_import "$TAG" \
  --change 'ENTRYPOINT ["/usr/bin/node"]' \
  --change 'WORKDIR /app' \
  --change 'ENV NODE_ENV=production SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change "LABEL org.opencontainers.image.title=node org.opencontainers.image.version=$VERSION"
echo "build-node-image: built $TAG (node $VERSION)"

#!/usr/bin/env bash
# Builds a Node.js base image without a registry: this machine's node binary plus the shared
# libraries that node and onnxruntime-node's linux-x64 binaries link, CA certificates, and an
# /etc/passwd with an unprivileged user `node` (uid/gid 1000), imported with `docker import`.
#
# Usage: scripts/build-node-image.sh [TAG]        (default local/node:20)
#        FORCE=1 scripts/build-node-image.sh      rebuild even if TAG exists
# Needs: docker (a running daemon), node on PATH.
#
# Rebuilt only when missing: `docker import` is not reproducible and a new base ID would bust the
# app image's layer cache.
set -euo pipefail

TAG="${1:-local/node:20}"
NODE_BIN="$(readlink -f "${NODE_BIN:-$(command -v node)}")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${FORCE:-0}" != "1" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-node-image: $TAG already exists (FORCE=1 to rebuild)"
  exit 0
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
chmod 755 "$ROOT"  # mktemp's 0700 would make "/" unreadable for uid 1000
mkdir -p "$ROOT/usr/bin" "$ROOT/tmp" "$ROOT/app" "$ROOT/home/node" "$ROOT/etc/ssl/certs"
chmod 1777 "$ROOT/tmp"
chown 1000:1000 "$ROOT/home/node"
cp "$NODE_BIN" "$ROOT/usr/bin/node"

# Libraries: node's own, plus what onnxruntime-node's binding and libonnxruntime need (librt is
# only pulled in by ORT), so the ORT native addon loads in the image.
ORT_DIR="$REPO_ROOT/node_modules/onnxruntime-node/bin/napi-v6/linux/x64"
objects=("$NODE_BIN")
[[ -d "$ORT_DIR" ]] && objects+=("$ORT_DIR/libonnxruntime.so.1")
for lib in $(ldd "${objects[@]}" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | grep -v "$REPO_ROOT" | sort -u); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done

cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/home/node:/sbin/nologin\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnode:x:1000:\n' >"$ROOT/etc/group"

VERSION="$("$NODE_BIN" -v)"
tar -C "$ROOT" --numeric-owner -c . | docker import \
  --change 'ENTRYPOINT ["/usr/bin/node"]' \
  --change 'WORKDIR /app' \
  --change 'ENV NODE_ENV=production SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change "LABEL org.opencontainers.image.title=node org.opencontainers.image.version=$VERSION" \
  - "$TAG" >/dev/null
echo "build-node-image: built $TAG (node $VERSION)"

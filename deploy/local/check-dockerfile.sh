#!/usr/bin/env bash
# Builds deploy/Dockerfile (the registry Dockerfile, default CPU target) offline, to check that
# its stages work: the node:20-bookworm-slim base it names cannot be pulled here, so a stand-in
# base is imported from this (Debian 12 = bookworm) machine: node, npm, dash as /bin/sh and the
# few coreutils the RUN steps use, plus a `node` user with uid 1000 like the official image.
# npm ci inside the build needs the npm registry (`--network host`).
#
# Usage: [REF=<commit>] deploy/local/check-dockerfile.sh [TAG]
#        (default TAG local/fedbiot-services:dockerfile-check)
# Not covered: deploy/Dockerfile.gpu (it runs apt-get, which the stand-in lacks).
set -euo pipefail

TAG="${1:-local/fedbiot-services:dockerfile-check}"
STANDIN="${STANDIN:-local/node-standin:20-bookworm}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

if ! docker image inspect "$STANDIN" >/dev/null 2>&1; then
  ROOT="$(mktemp -d)"
  trap 'rm -rf "$ROOT"' EXIT
  chmod 755 "$ROOT"
  mkdir -p "$ROOT/usr/bin" "$ROOT/usr/local/bin" "$ROOT/usr/lib/node_modules" "$ROOT/tmp" "$ROOT/etc/ssl/certs" \
    "$ROOT/home/node" "$ROOT/root"
  chmod 1777 "$ROOT/tmp"
  chown 1000:1000 "$ROOT/home/node"
  ln -s usr/bin "$ROOT/bin"
  ln -s usr/lib "$ROOT/lib"
  ln -s usr/lib64 "$ROOT/lib64"
  bins=(/usr/bin/dash /usr/bin/rm /usr/bin/mkdir /usr/bin/chown /usr/bin/env /usr/bin/ls /usr/bin/cat /usr/bin/cp)
  node_bin="$(readlink -f "$(command -v node)")"
  cp "$node_bin" "$ROOT/usr/local/bin/node"
  for b in "${bins[@]}"; do cp "$b" "$ROOT/usr/bin/"; done
  ln -s dash "$ROOT/usr/bin/sh"
  # glibc's librt too: node:20-bookworm-slim has all of libc6, and onnxruntime-node links librt.
  libc_dir="$(dirname "$(ldd "$node_bin" | grep -o '/[^ ]*libc\.so\.6')")"
  for lib in $(ldd "$node_bin" "${bins[@]}" | grep -o '/[^ ]*\.so[^ ]*' | sort -u) "$libc_dir/librt.so.1"; do
    real="${lib#/usr}"
    mkdir -p "$ROOT/usr$(dirname "$real")"
    cp -L "$lib" "$ROOT/usr$real"
  done
  cp -a "$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")" "$ROOT/usr/lib/node_modules/npm"
  ln -s ../../lib/node_modules/npm/bin/npm-cli.js "$ROOT/usr/local/bin/npm"
  ln -s ../../lib/node_modules/npm/bin/npx-cli.js "$ROOT/usr/local/bin/npx"
  cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\n' >"$ROOT/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$ROOT/etc/group"
  tar -C "$ROOT" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["node"]' - "$STANDIN" >/dev/null
  echo "check-dockerfile: imported stand-in base $STANDIN"
fi

# The legacy builder ignores deploy/Dockerfile.dockerignore, so stage what BuildKit would send:
# the sources that file lets through, from the working tree (tracked and untracked, not ignored),
# or from commit REF (REF=<commit>: a tree whose code compiles while others' work is mid-way).
# The Dockerfile and deploy/tsconfig.build.json always come from the working tree.
CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT" ${ROOT:+"$ROOT"}' EXIT
SOURCES=(package.json package-lock.json .npmrc tsconfig.json libs services bin)
if [[ -n "${REF:-}" ]]; then
  git archive "$REF" -- $(git ls-tree --name-only "$REF" -- "${SOURCES[@]}") | tar -x -C "$CONTEXT"
  find "$CONTEXT" \( -path '*/test/*' -o -name '*.test.ts' \) -type f -delete
else
  git ls-files -z --cached --others --exclude-standard -- "${SOURCES[@]}" |
    grep -zv -e '/test/' -e '\.test\.ts$' | xargs -0 cp --parents -t "$CONTEXT"
fi
mkdir -p "$CONTEXT/deploy"
cp deploy/Dockerfile deploy/tsconfig.build.json "$CONTEXT/deploy/"
mkdir -p "$CONTEXT/services" "$CONTEXT/bin"  # COPY of a directory that has no tracked files yet

DOCKER_BUILDKIT=0 docker build --network host --force-rm -q --build-arg "NODE_IMAGE=$STANDIN" \
  -f "$CONTEXT/deploy/Dockerfile" -t "$TAG" "$CONTEXT" >/dev/null
echo "check-dockerfile: built $TAG from deploy/Dockerfile"
docker image prune -f >/dev/null  # intermediate stages of the legacy builder

#!/usr/bin/env bash
# Builds the services image (all four NestJS apps, one image) on top of the registry-free
# local/node:20 base, from a small staged context: package.json, production node_modules
# (`npm ci --omit=dev --ignore-scripts`, onnxruntime-node's binaries for other platforms
# removed), the compiled dist/ without tests (services, bin and the libs they import) and the demo
# base model models/demo-llama (13 MB) at /app/models/demo-llama, so a demo job runs from the image
# alone; real checkpoints come from the model-cache volume (deploy/README.md section 1).
#
# Usage: scripts/build-app-image.sh [TAG]           (default local/fedbiot-services:dev)
#        scripts/build-app-image.sh --trainer [TAG] the trainers' image (default local/fedbiot-trainer:dev):
#                  the same code without models/ (MODELS=""), since a data owner's trainer gets only the
#                  emulator package over NATS and must not hold the model owner's weights (issue 11);
#                  scripts/validate-k8s.mjs (rule model-at-client) rejects a trainer pod on the other image
#   DIST_DIR=dist     compiled output to ship (run `npm run build` first)
#   BASE=local/node:20 base image (built by scripts/build-node-image.sh if missing)
#   FORCE=1           rebuild even if the image's content hash is unchanged
#   MODELS="demo-llama"  directories under models/ to ship (space-separated; "" for none)
#
# Idempotent: the image is labelled with a hash of everything it contains; an unchanged
# tree exits in well under a second. Production node_modules are cached per package-lock
# hash under .cache/app-image/, so only a lock change runs npm again.
set -euo pipefail

TRAINER=0
if [[ "${1:-}" == "--trainer" ]]; then
  TRAINER=1
  shift
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST_DIR="${DIST_DIR:-dist}"
BASE="${BASE:-local/node:20}"
if [[ "$TRAINER" == 1 ]]; then
  TAG="${1:-local/fedbiot-trainer:dev}"
  # Not overridable: a trainer image with a model in it is exactly what this target exists to rule out.
  [[ -z "${MODELS:-}" ]] || { echo "build-app-image: --trainer ships no models (MODELS=$MODELS given)" >&2; exit 1; }
  MODELS=""
else
  TAG="${1:-local/fedbiot-services:dev}"
  MODELS="${MODELS-demo-llama}"
fi
# Recorded on the image so a deployment check (or a person) can tell the two apart without unpacking it.
if [[ -n "${MODELS// /}" ]]; then WEIGHTS=true; else WEIGHTS=false; fi
CACHE="$REPO_ROOT/.cache/app-image"
cd "$REPO_ROOT"

[[ -d "$DIST_DIR" ]] || { echo "build-app-image: $DIST_DIR/ not found; run npm run build first" >&2; exit 1; }
# The entry points the manifests and bin/services.js start; an image without them cannot run a job.
for entry in services/server-alignment/main.js services/aggregator/main.js services/client-trainer/main.js \
  services/evaluator/main.js bin/services.js; do
  [[ -f "$DIST_DIR/$entry" ]] || { echo "build-app-image: $DIST_DIR/$entry not found; run npm run build first" >&2; exit 1; }
done
for m in $MODELS; do
  [[ -f "models/$m/config.json" ]] || { echo "build-app-image: models/$m/config.json not found (MODELS=$MODELS)" >&2; exit 1; }
done
docker image inspect "$BASE" >/dev/null 2>&1 || "$REPO_ROOT/scripts/build-node-image.sh" "$BASE"

# What goes into dist/ in the image: compiled code and source maps, no tests, no build info.
# Run inside $DIST_DIR; prints NUL-separated relative paths.
dist_files() {
  find . -type f \( -name '*.js' -o -name '*.js.map' -o -name '*.json' \) \
    ! -name '*.test.js' ! -name '*.test.js.map' ! -path './test/*' ! -path '*/test/*' -print0 | sort -z
}

LOCK_HASH="$(cat package-lock.json package.json | sha256sum | cut -c1-16)"
CONTENT_HASH="$({
  echo "$LOCK_HASH $WEIGHTS"
  docker image inspect --format '{{.Id}}' "$BASE"
  sha256sum deploy/local/Dockerfile.app
  (cd "$DIST_DIR" && dist_files | xargs -0 -r sha256sum)
  for m in $MODELS; do (cd models && find "$m" -type f -print0 | sort -z | xargs -0 -r sha256sum); done
} | sha256sum | cut -c1-32)"

if [[ "${FORCE:-0}" != "1" ]]; then
  have="$(docker image inspect --format '{{index .Config.Labels "org.fedbiot.content-hash"}}' "$TAG" 2>/dev/null || true)"
  if [[ "$have" == "$CONTENT_HASH" ]]; then
    echo "build-app-image: $TAG is up to date ($CONTENT_HASH)"
    exit 0
  fi
fi

# Production dependencies, once per lock file.
MODULES="$CACHE/prod-modules-$LOCK_HASH"
if [[ ! -d "$MODULES/node_modules" ]]; then
  rm -rf "$MODULES.tmp" && mkdir -p "$MODULES.tmp"
  cp package.json package-lock.json "$MODULES.tmp/"
  # --ignore-scripts + ONNXRUNTIME_NODE_INSTALL=skip: no postinstall downloads (ORT's CUDA
  # provider comes from NuGet, which is not reachable here and not needed for CPU/WebGPU).
  (cd "$MODULES.tmp" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --ignore-scripts \
    --prefer-offline --no-audit --no-fund --loglevel=error)
  # onnxruntime-node ships every OS/arch (~290 MB); the image only runs on linux/x64.
  ORT_BIN="$MODULES.tmp/node_modules/onnxruntime-node/bin/napi-v6"
  rm -rf "$ORT_BIN/darwin" "$ORT_BIN/win32" "$ORT_BIN/linux/arm64"
  rm -rf "$MODULES" && mv "$MODULES.tmp" "$MODULES"
  # Older caches for other lock files only cost disk.
  find "$CACHE" -maxdepth 1 -name 'prod-modules-*' ! -name "prod-modules-$LOCK_HASH" -exec rm -rf {} +
fi

CONTEXT="$CACHE/context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/dist"
cp deploy/local/Dockerfile.app "$CONTEXT/Dockerfile"
cp package.json "$CONTEXT/"
cp -al "$MODULES/node_modules" "$CONTEXT/node_modules" 2>/dev/null || cp -a "$MODULES/node_modules" "$CONTEXT/node_modules"
(cd "$DIST_DIR" && dist_files | tar --null -T - -cf -) | tar -C "$CONTEXT/dist" -xf -
# models/ always exists in the context (possibly empty): the Dockerfile's COPY needs it.
mkdir -p "$CONTEXT/models"
for m in $MODELS; do cp -a "models/$m" "$CONTEXT/models/$m"; done

# Debian 12 has no buildx, so the legacy builder; it uploads the whole context, hence the staging.
DOCKER_BUILDKIT=0 docker build --force-rm -q --build-arg "BASE=$BASE" \
  --label "org.fedbiot.content-hash=$CONTENT_HASH" --label "org.fedbiot.model-weights=$WEIGHTS" -t "$TAG" "$CONTEXT" >/dev/null
rm -rf "$CONTEXT"
echo "build-app-image: built $TAG ($CONTENT_HASH)"
docker image prune -f --filter "label=org.fedbiot.content-hash" >/dev/null 2>&1 || true

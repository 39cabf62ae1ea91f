#!/usr/bin/env bash
# Builds a NATS server image without a registry: Debian's nats-server binary plus the shared
# libraries it links, imported as a root filesystem with `docker import`.
#
# Usage: scripts/build-nats-image.sh [TAG]        (default local/nats:2.9.10)
#        FORCE=1 scripts/build-nats-image.sh      rebuild even if TAG exists
# Needs: docker (a running daemon), /usr/sbin/nats-server (apt-get install nats-server).
#
# The image is rebuilt only when missing: `docker import` is not reproducible, so a rebuild
# gets a new image ID and would bust the cache of every image built on top of it.
set -euo pipefail

TAG="${1:-local/nats:2.9.10}"
NATS_BIN="${NATS_BIN:-/usr/sbin/nats-server}"

if [[ "${FORCE:-0}" != "1" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-nats-image: $TAG already exists (FORCE=1 to rebuild)"
  exit 0
fi
[[ -x "$NATS_BIN" ]] || { echo "build-nats-image: $NATS_BIN not found; apt-get install nats-server" >&2; exit 1; }

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
# mktemp makes 0700 directories; as the image's "/" that would be unreadable for a non-root user.
chmod 755 "$ROOT"
mkdir -p "$ROOT/usr/sbin" "$ROOT/data" "$ROOT/tmp" "$ROOT/etc/nats"
chmod 1777 "$ROOT/tmp"
# Writable by the uid the Kubernetes StatefulSet runs as (1000), for runs without a volume.
chown 1000:1000 "$ROOT/data"
cp "$NATS_BIN" "$ROOT/usr/sbin/nats-server"
for lib in $(ldd "$NATS_BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnats:x:1000:1000:nats:/data:/sbin/nologin\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnats:x:1000:\n' >"$ROOT/etc/group"

VERSION="$("$NATS_BIN" --version | grep -o '[0-9][0-9.]*' | head -n1)"
tar -C "$ROOT" --numeric-owner -c . | docker import \
  --change 'ENTRYPOINT ["/usr/sbin/nats-server"]' \
  --change 'CMD ["-js","-sd","/data","-m","8222"]' \
  --change 'EXPOSE 4222 6222 8222' \
  --change "LABEL org.opencontainers.image.title=nats-server org.opencontainers.image.version=$VERSION" \
  - "$TAG" >/dev/null
echo "build-nats-image: built $TAG (nats-server $VERSION)"

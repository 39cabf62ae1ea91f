#!/usr/bin/env bash
# Builds a NATS server image without a registry: Debian's nats-server binary plus the shared
# libraries it links, imported as a root filesystem with `docker import`.
#
# Usage: scripts/build-nats-image.sh [TAG]        (default local/nats:2.9.10)
#        FORCE=1 scripts/build-nats-image.sh      rebuild even if TAG exists
# Needs: docker (a running daemon), /usr/sbin/nats-server (apt-get install nats-server).
#
# The image is rebuilt only when missing (scripts/rootfs-image.sh says why).
set -euo pipefail
# shellcheck source=rootfs-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/rootfs-image.sh"

TAG="${1:-local/nats:2.9.10}"
NATS_BIN="${NATS_BIN:-/usr/sbin/nats-server}"

rootfs_skip_if_built build-nats-image "$TAG"
[[ -x "$NATS_BIN" ]] || { echo "build-nats-image: $NATS_BIN not found; apt-get install nats-server" >&2; exit 1; }

rootfs_new
mkdir -p "$ROOT/usr/sbin" "$ROOT/data" "$ROOT/etc/nats"
# Writable by the uid the Kubernetes StatefulSet runs as (1000), for runs without a volume.
chown 1000:1000 "$ROOT/data"
cp "$NATS_BIN" "$ROOT/usr/sbin/nats-server"
# shellcheck disable=SC2046 # one path a word
rootfs_add_libs $(ldd "$NATS_BIN" | grep -o '/[^ ]*')
rootfs_user nats /data

VERSION="$("$NATS_BIN" --version | grep -o '[0-9][0-9.]*' | head -n1)"
rootfs_import "$TAG" \
  --change 'ENTRYPOINT ["/usr/sbin/nats-server"]' \
  --change 'CMD ["-js","-sd","/data","-m","8222"]' \
  --change 'EXPOSE 4222 6222 8222' \
  --change "LABEL org.opencontainers.image.title=nats-server org.opencontainers.image.version=$VERSION"
echo "build-nats-image: built $TAG (nats-server $VERSION)"

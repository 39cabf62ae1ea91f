# Sourced by scripts/build-nats-image.sh and scripts/build-node-image.sh: the steps of a registry-free image, a root
# filesystem staged in a temporary folder and imported with `docker import`. Each function's errors end the script
# (the callers run under `set -euo pipefail`). Not meant to run on its own.

# Exits the calling script when image $2 exists already (unless FORCE=1): `docker import` is not reproducible, so a
# rebuild gets a new image ID and busts the layer cache of every image built on top of it. $1: the script's name.
rootfs_skip_if_built() {
  if [[ "${FORCE:-0}" != "1" ]] && docker image inspect "$2" >/dev/null 2>&1; then
    echo "$1: $2 already exists (FORCE=1 to rebuild)"
    exit 0
  fi
}

# Sets ROOT to a fresh staging folder, removed when the script exits, with a world-writable sticky /tmp.
rootfs_new() {
  ROOT="$(mktemp -d)"
  trap 'rm -rf "$ROOT"' EXIT
  # mktemp makes 0700 directories; as the image's "/" that would be unreadable for a non-root user.
  chmod 755 "$ROOT"
  mkdir -p "$ROOT/tmp"
  chmod 1777 "$ROOT/tmp"
}

# Copies each shared library named (absolute paths) to the same path under ROOT.
rootfs_add_libs() {
  local lib
  for lib in "$@"; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
}

# Writes /etc/passwd and /etc/group: root, and the unprivileged user $1 (uid/gid 1000) with home $2.
rootfs_user() {
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:1000:1000:%s:%s:/sbin/nologin\n' "$1" "$1" "$2" >"$ROOT/etc/passwd"
  printf 'root:x:0:\n%s:x:1000:\n' "$1" >"$ROOT/etc/group"
}

# Imports ROOT as image $1 (owners kept as numbers); the other arguments go to `docker import` (its --change options).
rootfs_import() {
  local tag="$1"
  shift
  tar -C "$ROOT" --numeric-owner -c . | docker import "$@" - "$tag" >/dev/null
}

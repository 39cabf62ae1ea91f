#!/usr/bin/env bash
# Provisions what the test suite needs beyond node_modules, so `npm test` passes on a fresh machine:
#   tools      chromium (dashboard test), dockerd (Testcontainers tests), nats-server (private brokers, auth and
#              deployment tests, the NATS image), openssl (TLS test), kubectl (manifest tests)
#   NATS       a nats-server with JetStream on 127.0.0.1:4222 (libs/protocol tests, NATS_URL's default)
#   Docker     a running daemon (started here: overlay2, else vfs) and the local images the container tests run:
#              local/nats:2.9.10, local/node:20, local/fedbiot-services:dev and the trainers' model-free
#              local/fedbiot-trainer:dev (scripts/build-*-image.sh)
#
# Usage: scripts/test-env.sh up [OWNER_PID]     provision (npm test runs this through scripts/run-tests.mjs)
#        scripts/test-env.sh down [OWNER_PID]   remove Testcontainers containers and stop the dockerd / nats-server
#                                               that `up` started, once no other live run is using them
# Environment: DIST_DIR (dist; the app image ships it: run `npm run build` first), CHROMIUM_BIN, NATS_SERVER_BIN,
#              NATS_URL (a broker elsewhere: nothing is started for 4222), FEDBIOT_TEST_ENV_STATE (state directory),
#              FEDBIOT_TEST_ENV_APP_IMAGE=0 (skip the services and trainer images: run-tests.mjs sets it when no container test runs).
#
# Idempotent: what is already there is only checked (about a second when nothing changed). Missing tools come from
# Debian's apt (`apt-get update` once, then install; root, or passwordless sudo). Anything that cannot be
# provisioned stops the run with exit status 1 and a line saying what is missing: tests are never skipped for it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${FEDBIOT_TEST_ENV_STATE:-/tmp/fedbiot-test-env}"
NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"
export DIST_DIR="${DIST_DIR:-dist}"
CMD="${1:-up}"
OWNER="${2:-$PPID}"
T0=$SECONDS

say() { printf 'test-env: %s\n' "$*"; }
die() {
  printf '\ntest-env: CANNOT PROVISION THE TEST ENVIRONMENT: %s\n' "$*" >&2
  printf 'test-env: fix that (or run on a machine that has it), then run npm test again; no test was run.\n\n' >&2
  exit 1
}

mkdir -p "$STATE/users"
# One provisioning or teardown at a time on this machine (concurrent `npm test` runs share dockerd and NATS).
exec 9>"$STATE/lock"
flock -w 600 9 || die "another scripts/test-env.sh held $STATE/lock for 10 minutes"

SUDO=()
[[ $EUID -eq 0 ]] || SUDO=(sudo -n)
APT_UPDATED=0
apt_install() { # PACKAGE...
  command -v apt-get >/dev/null || die "$* missing, and this machine has no apt-get to install it with"
  if [[ $EUID -ne 0 ]] && ! sudo -n true 2>/dev/null; then
    die "$* missing; installing it needs root (or passwordless sudo): apt-get install $*"
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed (no package mirror reachable?)"
    APT_UPDATED=1
  fi
  say "apt-get install $* (a minute or two, once per machine)"
  "${SUDO[@]}" apt-get install -y -qq "$@" >"$STATE/apt.log" 2>&1 ||
    { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install $* failed (log: $STATE/apt.log)"; }
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
docker_up() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }
pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

chromium_path() {
  if [[ -n "${CHROMIUM_BIN:-}" ]]; then
    [[ -x "$CHROMIUM_BIN" ]] && echo "$CHROMIUM_BIN"
    return 0
  fi
  command -v chromium chromium-browser google-chrome google-chrome-stable 2>/dev/null | head -n1 || true
}

start_dockerd() { # STORAGE_DRIVER
  # setsid: a Ctrl-C in the terminal reaches the tests, not the daemon (`down` stops it); 9>&-: not the lock.
  setsid dockerd --storage-driver="$1" --iptables=false </dev/null >"$STATE/dockerd.log" 2>&1 9>&- &
  local pid=$!
  for _ in $(seq 1 60); do
    docker_up && { echo "$pid" >"$STATE/dockerd.pid"; return 0; }
    pid_alive "$pid" || break
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

up() {
  echo "$OWNER" >"$STATE/users/$OWNER"

  # Tools: collect what is missing, install it with one apt-get call.
  local missing=()
  [[ -n "$(chromium_path)" ]] || missing+=(chromium)
  command -v dockerd >/dev/null || missing+=(docker.io)
  [[ -x "$NATS_SERVER_BIN" ]] || missing+=(nats-server)
  command -v openssl >/dev/null || missing+=(openssl)
  if ! command -v kubectl >/dev/null; then
    # Debian 12 has no `kubectl` package; its kubernetes-client ships a kubectl with kustomize built in.
    if apt-cache show kubectl >/dev/null 2>&1; then missing+=(kubectl); else missing+=(kubernetes-client); fi
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    [[ -n "${CHROMIUM_BIN:-}" && " ${missing[*]} " == *" chromium "* ]] &&
      die "CHROMIUM_BIN=$CHROMIUM_BIN is not an executable"
    apt_install "${missing[@]}"
  fi
  local chromium
  chromium="$(chromium_path)"
  [[ -n "$chromium" ]] || die "no chromium after installing it"
  command -v dockerd >/dev/null || die "no dockerd after installing docker.io"
  [[ -x "$NATS_SERVER_BIN" ]] || die "no $NATS_SERVER_BIN after installing nats-server"
  command -v kubectl >/dev/null || die "no kubectl after installing ${missing[*]}"

  # NATS with JetStream where the tests look for it, unless NATS_URL points elsewhere.
  local nats="127.0.0.1:4222 (already running)"
  if [[ -n "${NATS_URL:-}" && "$NATS_URL" != "nats://127.0.0.1:4222" && "$NATS_URL" != "nats://localhost:4222" ]]; then
    nats="$NATS_URL (NATS_URL, not started here)"
  elif ! port_open 127.0.0.1 4222; then
    say "starting nats-server -js on 127.0.0.1:4222"
    mkdir -p "$STATE/nats"
    setsid "$NATS_SERVER_BIN" -js -sd "$STATE/nats" -a 127.0.0.1 -p 4222 </dev/null >"$STATE/nats.log" 2>&1 9>&- &
    echo $! >"$STATE/nats.pid"
    for _ in $(seq 1 50); do port_open 127.0.0.1 4222 && break; sleep 0.2; done
    port_open 127.0.0.1 4222 || die "nats-server did not listen on 127.0.0.1:4222: $(tail -n 5 "$STATE/nats.log")"
    nats="127.0.0.1:4222 (started, pid $(cat "$STATE/nats.pid"))"
  fi

  # Docker daemon: started here when none answers; overlay2 needs a kernel and filesystem that allow it, vfs
  # always works (slower, more disk).
  local dockerd_note="already running"
  if ! docker_up; then
    say "starting dockerd"
    if start_dockerd overlay2; then
      dockerd_note="started, overlay2"
    elif start_dockerd vfs; then
      dockerd_note="started, vfs (overlay2 unavailable)"
    else
      die "dockerd did not start (log: $STATE/dockerd.log): $(tail -n 5 "$STATE/dockerd.log")"
    fi
  fi

  # The local images (each script is a no-op when its image is current).
  cd "$REPO_ROOT"
  scripts/build-nats-image.sh || die "scripts/build-nats-image.sh failed"
  scripts/build-node-image.sh || die "scripts/build-node-image.sh failed"
  if [[ "${FEDBIOT_TEST_ENV_APP_IMAGE:-1}" == 1 ]]; then
    scripts/build-app-image.sh || die "scripts/build-app-image.sh failed (run npm run build first)"
    scripts/build-app-image.sh --trainer || die "scripts/build-app-image.sh --trainer failed (run npm run build first)"
  else
    say "services image not needed by the chosen tests; not rebuilt"
  fi

  say "ready in $((SECONDS - T0))s: chromium $chromium, docker $(docker info --format '{{.ServerVersion}} {{.Driver}}') ($dockerd_note), nats $nats"
}

down() {
  rm -f "$STATE/users/$OWNER"
  local f
  for f in "$STATE"/users/*; do
    [[ -e "$f" ]] || continue
    if pid_alive "$(basename "$f")"; then
      say "another test run (pid $(basename "$f")) still uses this environment; leaving it up"
      return 0
    fi
    rm -f "$f"
  done
  if docker_up; then
    local ids
    ids="$(docker ps -aq --filter label=org.testcontainers=true 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [[ -z "$ids" ]] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  local what pid
  for what in dockerd nats; do
    [[ -f "$STATE/$what.pid" ]] || continue
    pid="$(cat "$STATE/$what.pid")"
    rm -f "$STATE/$what.pid"
    pid_alive "$pid" || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do pid_alive "$pid" || break; sleep 0.25; done
    say "stopped the $what this environment started (pid $pid)"
  done
}

case "$CMD" in
  up) up ;;
  down) down ;;
  *) echo "usage: scripts/test-env.sh up|down [OWNER_PID]" >&2; exit 2 ;;
esac

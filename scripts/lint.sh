#!/usr/bin/env bash
# Install (if needed) and run the formatter and the linter (ruff, configured in pyproject.toml).
# ./scripts/lint.sh checks; ./scripts/lint.sh --fix rewrites the files.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh >/dev/null
if [ "${1:-}" = --fix ]; then
  .venv/bin/ruff format .
  .venv/bin/ruff check --fix .
else
  .venv/bin/ruff format --check .
  .venv/bin/ruff check .
fi

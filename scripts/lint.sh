#!/usr/bin/env bash
# Install (if needed) and run the formatter, the linter (ruff) and the type checker (mypy over fedimdb/,
# server/ and client/), all three configured in pyproject.toml.
# ./scripts/lint.sh checks; ./scripts/lint.sh --fix rewrites the files (ruff), then type-checks them.
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
.venv/bin/mypy

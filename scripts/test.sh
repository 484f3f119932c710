#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit tests and real local Flower deployments, on
# FEDIMDB_TEST_WORKERS (2) workers; the units of work and their order: tests/conftest.py.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
. .venv/bin/activate
exec python -m pytest -n "${FEDIMDB_TEST_WORKERS:-2}" --no-loadscope-reorder "$@"

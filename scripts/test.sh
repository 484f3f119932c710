#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit tests and real local Flower deployments.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
. .venv/bin/activate
exec python -m pytest "$@"

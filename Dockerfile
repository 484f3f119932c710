# fedimdb images, one stage each (docker-compose.yml picks them with `target:`):
#   server  SuperLink (gRPC Fleet API 9092, HTTP Control/Runtime API 8000) and the ServerApp it
#           starts for each run; the one-shot data-preparation and runner services use it too
#   client  a SuperNode that starts the ClientApp for each message
# CPU torch by default; GPU clients: TORCH_INDEX_URL=a CUDA wheel index (docker-compose.gpu.yml).
# Air-gapped: WHEELHOUSE_ONLY=1 installs only from ./wheelhouse (fill it with scripts/wheelhouse.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE_ONLY=0
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=bind,source=docker,target=/tmp/build/docker \
    --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    TORCH_INDEX_URL=${TORCH_INDEX_URL} WHEELHOUSE_ONLY=${WHEELHOUSE_ONLY} sh /tmp/build/docker/install.sh
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 HOME=/home/fedimdb \
    FLWR_HOME=/home/fedimdb/.flwr FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    HF_HOME=/home/fedimdb/.cache/huggingface TOKENIZERS_PARALLELISM=false
COPY --chown=fedimdb:fedimdb pyproject.toml README.md orchestrate.py /app/
COPY --chown=fedimdb:fedimdb fedimdb /app/fedimdb
COPY --chown=fedimdb:fedimdb server /app/server
COPY --chown=fedimdb:fedimdb client /app/client
WORKDIR /app
USER fedimdb

FROM base AS server
EXPOSE 9092 8000
CMD ["python", "-m", "fedimdb.deploy.processes", "superlink"]

FROM base AS client
CMD ["python", "-m", "fedimdb.deploy.processes", "supernode"]

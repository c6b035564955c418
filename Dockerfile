# vaeserve images (deploy/README.md):
#   docker build --target train -t vaeserve:train .                           torch on CPU; trains and exports
#   docker build --target serve -t vaeserve:serve .                           slim ONNX Runtime service, no torch
#   docker build --target serve --build-arg RUNTIME=gpu -t vaeserve:serve-gpu .   CUDA runtime + onnxruntime-gpu
# Layers go from least to most often changed: OS packages, pinned Python packages, then the project.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# cpu (python slim + onnxruntime) or gpu (CUDA runtime + onnxruntime-gpu): the base of the serve target.
ARG RUNTIME=cpu

# ---- the project as a wheel without dependencies (they are pinned in deploy/requirements/)
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY service ./service
COPY vaeserve ./vaeserve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- Python in a virtual environment; shared settings of every target
FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vaeserve

# ---- train: `vaeserve train|evaluate|export`; by default trains the default model unless /artifacts has one
FROM python AS train
# Exactly this torch, alone, from the CPU wheel index: a bare `torch` pulls a multi-GB CUDA build.
# GPU training: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 (and a GPU at run time).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Debian's Fashion-MNIST, the default training data (/usr/share/datasets/fashion-mnist).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY deploy/requirements/train.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/vaeserve-*.whl && rm -rf /tmp/wheels
COPY --chmod=755 deploy/train-if-missing.sh /usr/local/bin/train-if-missing
RUN mkdir -p /artifacts /runs && chown vaeserve:vaeserve /artifacts /runs
ENV HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib VAESERVE_ARTIFACTS_DIR=/artifacts RUN_DIR=/runs/default
WORKDIR /runs
USER 10001
VOLUME ["/artifacts", "/runs"]
CMD ["train-if-missing"]

# ---- serve runtimes: ONNX Runtime on CPU, or on CUDA
FROM python AS runtime-cpu
COPY deploy/requirements/serve.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

FROM ${CUDA_IMAGE} AS runtime-gpu
ARG ORT_GPU_VERSION=1.31.1
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH DEBIAN_FRONTEND=noninteractive VAESERVE_DEVICE=cuda
# The distribution's python3 moves with its security updates; pinning it would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin vaeserve
COPY deploy/requirements/serve.txt /tmp/requirements.txt
RUN grep -v '^onnxruntime==' /tmp/requirements.txt > /tmp/requirements-gpu.txt \
 && pip install -r /tmp/requirements-gpu.txt "onnxruntime-gpu==${ORT_GPU_VERSION}"

# ---- serve: one uvicorn worker per container (the batcher is in-process); scale with replicas
# runtime-cpu or runtime-gpu: a stage of this file, not an image from a registry.
# hadolint ignore=DL3006
FROM runtime-${RUNTIME} AS serve
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/vaeserve-*.whl && rm -rf /tmp/wheels && mkdir -p /artifacts
# Every VAESERVE_* setting can be overridden at run time (deploy/README.md has the table).
# HOME: the user has none; ONNX Runtime keeps a small cache under it, the only write the server makes, so
# a read-only root filesystem needs just a tmpfs on /tmp.
ENV VAESERVE_HOST=0.0.0.0 VAESERVE_PORT=8000 VAESERVE_ARTIFACTS_DIR=/artifacts HOME=/tmp
USER 10001
EXPOSE 8000
VOLUME ["/artifacts"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 CMD ["python", "-m", "service.server.healthcheck"]
# Exec form: the server is PID 1 and gets SIGTERM itself (graceful shutdown, exit status 143: `docker
# inspect` shows it after `docker stop`; tests/containers/test_stack.py reads this line).
ENTRYPOINT ["vaeserve", "serve"]

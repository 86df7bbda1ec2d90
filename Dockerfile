# syntax=docker/dockerfile:1
# pix2pix images. Three targets; the last stage in this file, serve-cpu, is the default.
#
#   serve-cpu  the HTTP service on ONNX Runtime: no PyTorch, no training code, the demo models
#              baked in at /models.          docker build -t pix2pix .
#   serve-gpu  the same service on CUDA PyTorch (serves exported safetensors models on the GPU).
#                                            docker build --target serve-gpu -t pix2pix:gpu .
#   train-gpu  the `pix2pix` command with CUDA PyTorch, for training on a mounted dataset.
#                                            docker build --target train-gpu -t pix2pix:train .
#
# Build arguments (all optional):
#   BASE_IMAGE       base image of the target you build. Unset: python:3.11-slim-bookworm for
#                    serve-cpu, nvidia/cuda:13.0.2-base-ubuntu24.04 for the GPU targets. Any
#                    Debian or Ubuntu image works that has Python >= 3.11 with venv, or that
#                    can apt-get install it.
#   TORCH_INDEX_URL  where the GPU targets get torch and torchvision. Unset: PyPI, whose Linux
#                    wheels of torch 2.14 are built for CUDA 13.0 (NVIDIA driver >= 580). For an
#                    older driver use e.g. https://download.pytorch.org/whl/cu128 with
#                    BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04.
#   CA_BUNDLE        a PEM file of extra certificate authorities to trust while installing
#                    packages, for builds behind a TLS-intercepting proxy: a path inside the
#                    build context (e.g. docker/certs/corporate.pem) or a file that the builder
#                    bind-mounts (buildah/podman build -v). It is used by pip only and is not
#                    left in the image.
#   MODELS           build-context folder baked in at /models (default: models, the demo
#                    models). Mount your own over it at run time: -v ./my-models:/models:ro
#
# Settings come from the environment: PIX2PIX_* for the service (see app/settings.py),
# UVICORN_* for the server (e.g. UVICORN_PORT, UVICORN_WORKERS).

ARG BASE_IMAGE=""

# -- GPU: CUDA PyTorch and the full project ---------------------------------------------------
# PyTorch's CUDA wheels carry cuBLAS, cuDNN and NCCL themselves, so NVIDIA's "base" flavour
# (the CUDA runtime and the driver hook-up) is enough; "runtime" would add the same libraries
# again, about 2.5 GB.
# NO_ALBUMENTATIONS_UPDATE: albumentations otherwise asks the internet for its latest version
# on every import.
FROM ${BASE_IMAGE:-nvidia/cuda:13.0.2-base-ubuntu24.04} AS gpu-base
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NO_ALBUMENTATIONS_UPDATE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 pix2pix \
    && useradd --system --uid 10001 --gid pix2pix --home-dir /home/pix2pix --create-home pix2pix
ENV PATH=/opt/venv/bin:$PATH

# pyproject's dependencies as two lists: torch and torchvision, and the rest. The layers below
# copy these lists rather than pyproject.toml, so editing anything else in it (the version, a
# tool's settings) or any code reuses them, and changing a non-torch dependency keeps torch.
FROM gpu-base AS gpu-requirements
COPY pyproject.toml docker/project_dependencies.py /tmp/build/
RUN cd /tmp/build \
    && python3 project_dependencies.py --only torch,torchvision >torch.txt \
    && python3 project_dependencies.py --except torch,torchvision >rest.txt

FROM gpu-base AS gpu-deps
ARG TORCH_INDEX_URL=""
ARG CA_BUNDLE=""
COPY docker/pip-install.sh /tmp/build/
COPY --from=gpu-requirements /tmp/build/torch.txt /tmp/build/
RUN --mount=type=bind,source=docker/certs,target=/run/context/docker/certs \
    cd /run/context \
    && sh /tmp/build/pip-install.sh ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        -r /tmp/build/torch.txt
COPY --from=gpu-requirements /tmp/build/rest.txt /tmp/build/
RUN --mount=type=bind,source=docker/certs,target=/run/context/docker/certs \
    cd /run/context \
    && sh /tmp/build/pip-install.sh -r /tmp/build/rest.txt 'setuptools>=68' \
    && rm -rf /tmp/build

# The project itself, installed without dependencies (they are above) and without a build
# environment (setuptools is already there), so a code-only rebuild downloads nothing.
FROM gpu-deps AS gpu-project
COPY pyproject.toml README.md /tmp/src/
COPY model /tmp/src/model
COPY training /tmp/src/training
COPY app /tmp/src/app
COPY pix2pix /tmp/src/pix2pix
RUN pip install --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src

FROM gpu-project AS train-gpu
# Any --user works (give yours, so that the runs on the mounted folder are yours): HOME, where
# torch.compile and Triton keep their caches, and /workspace are writable by everyone.
ENV HOME=/home/pix2pix
RUN chmod 1777 /home/pix2pix && mkdir /workspace && chmod 1777 /workspace
WORKDIR /workspace
COPY configs /workspace/configs
USER 10001:10001
# Mount the dataset at /workspace/data and a folder for the runs at /workspace/runs:
#   docker run --gpus all --shm-size 8g -v "$PWD/data:/workspace/data" \
#     -v "$PWD/runs:/workspace/runs" pix2pix:train train --config configs/facades.toml
ENTRYPOINT ["pix2pix"]
CMD ["--help"]

# Exported model folders can be private to their owner (mode 0600): make them readable by
# the service's user here, so that the final stage gets them in one layer.
FROM gpu-base AS gpu-models
ARG MODELS=models
COPY ${MODELS} /models
RUN chmod -R a+rX,go-w /models

FROM gpu-project AS serve-gpu
COPY --from=gpu-models /models /models
ENV PIX2PIX_MODELS_DIR=/models \
    PIX2PIX_DEVICE=auto \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    PIX2PIX_DRAIN_TIMEOUT_S=7 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=8 \
    UVICORN_TIMEOUT_KEEP_ALIVE=75
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('UVICORN_PORT', '8000'), timeout=4)"
# uvicorn is PID 1 and gets SIGTERM itself: it stops accepting connections and lets the requests
# in flight finish for up to PIX2PIX_DRAIN_TIMEOUT_S seconds; the service answers what is not
# done by then with 503 and Retry-After. uvicorn's own limit is a second longer, and both fit in
# `docker stop`'s default 10 s (and Kubernetes' 30 s). Raise all three together for long
# requests (docker-compose.yml).
STOPSIGNAL SIGTERM
USER 10001:10001
CMD ["uvicorn", "app.main:create_app", "--factory"]

# -- CPU: ONNX Runtime, no PyTorch --------------------------------------------------------------
FROM ${BASE_IMAGE:-python:3.11-slim-bookworm} AS cpu-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Builds the virtual environment that serve-cpu copies, then takes pip and setuptools out of it:
# the service needs neither.
FROM cpu-base AS cpu-deps
ARG CA_BUNDLE=""
COPY docker/pip-install.sh /tmp/build/
COPY requirements/serve-cpu.txt /tmp/build/requirements/
RUN --mount=type=bind,source=docker/certs,target=/run/context/docker/certs \
    python3 -m venv /opt/venv \
    && cd /run/context \
    && PYTHON=/opt/venv/bin/python sh /tmp/build/pip-install.sh \
        -r /tmp/build/requirements/serve-cpu.txt \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# Exported model folders can be private to their owner (mode 0600): make them readable by
# the service's user here, so that the final stage gets them in one layer.
FROM cpu-base AS cpu-models
ARG MODELS=models
COPY ${MODELS} /models
RUN chmod -R a+rX,go-w /models

FROM cpu-base AS serve-cpu
RUN groupadd --system --gid 10001 pix2pix \
    && useradd --system --uid 10001 --gid pix2pix --no-create-home --home-dir /nonexistent pix2pix
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/pix2pix \
    PIX2PIX_MODELS_DIR=/models \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    PIX2PIX_DRAIN_TIMEOUT_S=7 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=8 \
    UVICORN_TIMEOUT_KEEP_ALIVE=75
WORKDIR /srv/pix2pix
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('UVICORN_PORT', '8000'), timeout=4)"
# uvicorn is PID 1 and gets SIGTERM itself: it stops accepting connections and lets the requests
# in flight finish for up to PIX2PIX_DRAIN_TIMEOUT_S seconds; the service answers what is not
# done by then with 503 and Retry-After. uvicorn's own limit is a second longer, and both fit in
# `docker stop`'s default 10 s (and Kubernetes' 30 s). Raise all three together for long
# requests (docker-compose.yml).
STOPSIGNAL SIGTERM
USER 10001:10001
CMD ["uvicorn", "app.main:create_app", "--factory"]
COPY --from=cpu-deps /opt/venv /opt/venv
COPY --from=cpu-models /models /models
# The code comes last, so that a code change rebuilds only these two layers. Only the two
# packages the service runs: model/ imports torch lazily, and app/ does not need it here.
COPY model ./model
COPY app ./app

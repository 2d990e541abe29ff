# Face age-transformation service: the FastAPI app, the flow model and the shipped weights.
#
# It needs BuildKit (its RUN --mount). Docker 23 and later build with BuildKit through the buildx plugin
# (Debian: docker-buildx); Docker 20.10 (Debian 12's docker.io) has it built in: DOCKER_BUILDKIT=1.
#   docker build -t face-age .                                     # torch from PyPI (see below)
#   docker build --build-arg TORCH_VARIANT=cpu -t face-age:cpu .   # CPU-only torch, a much smaller image
#   docker run --rm -p 127.0.0.1:8000:8000 face-age                # then open http://127.0.0.1:8000
#
# TORCH_VARIANT chooses the torch build; both serve without a GPU (DEVICE=auto falls back to the CPU).
#   cuda (default): the wheels pinned in requirements.lock, as PyPI serves them for x86_64. They carry
#         CUDA 13 in nvidia-* wheels (about 3 GB), so the same image uses a GPU where one is passed in
#         and needs nothing but PyPI to build. Default because it is the one build that installs
#         from PyPI alone: PyPI has no CPU-only torchvision, and PyPI's torchvision links against
#         CUDA torch, so it cannot be paired with a CPU-only torch wheel found elsewhere.
#   cpu:  torch and torchvision, same versions, from the PyTorch CPU index (TORCH_CPU_INDEX, which
#         can point at a mirror); the rest from PyPI. No CUDA libraries: about 1 GB (estimated; the
#         default measures 5.1 GB).
# Build settings for pip that must not end up in a layer are passed as BuildKit secrets, both optional:
#   --secret id=pip_conf,src=pip.conf   (index-url / extra-index-url of a mirror, credentials)
#   --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt   (a proxy's CA)
# docker/test.sh builds, starts and checks the image; docs/DEPLOY.md has the deployment notes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY requirements.lock requirements-nodeps.lock /tmp/requirements/
WORKDIR /tmp/requirements
# Every package comes from the lock files, each checked against its hashes. For `cpu`, torch and
# torchvision (the lock's versions) come from the CPU index instead, whose wheels the lock cannot hash;
# the lock's CUDA wheels (nvidia-*, cuda-*, triton) are left out, and the rest is installed as locked.
# triton only serves torch.compile, which the service never calls: dropping it saves about 0.9 GB.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -f /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    case "$TORCH_VARIANT" in \
      cpu) grep -oE '^torch(vision)?==[^ ]+' requirements.lock > torch.txt; \
           pip install --no-cache-dir --no-deps --index-url "$TORCH_CPU_INDEX" -r torch.txt; \
           awk '/^[a-z0-9]/ { skip = ($1 ~ /^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==/) } \
                !skip' requirements.lock > install.lock ;; \
      cuda) cp requirements.lock install.lock ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;; \
    esac; \
    pip install --no-cache-dir --require-hashes -r install.lock; \
    pip install --no-cache-dir --require-hashes --no-deps -r requirements-nodeps.lock; \
    pip uninstall --yes triton
WORKDIR /app
COPY app/ app/
COPY model/ model/
COPY weights/ weights/
# readable by the service user whatever modes the files had here (safetensors writes 0600)
RUN python3 -m compileall -q app model \
    && chmod -R a+rX,go-w /app

FROM ${PYTHON_IMAGE}
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="face-age" \
      org.opencontainers.image.description="Face age transformation with a Glow flow: web page and HTTP API" \
      torch.variant="${TORCH_VARIANT}"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app
COPY --from=builder /opt/venv /opt/venv
# Code and weights stay owned by root: the service user can read them, not change them.
COPY --from=builder /app /app
WORKDIR /app
# app.serve reads UVICORN_HOST, UVICORN_PORT and WEB_CONCURRENCY (worker processes), uvicorn FORWARDED_ALLOW_IPS;
# the app reads DEVICE, TORCH_THREADS and WEIGHTS_DIR.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    WEB_CONCURRENCY=1 \
    DEVICE=auto \
    WEIGHTS_DIR=/app/weights
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('UVICORN_PORT', '8000'), timeout=4)"]
# app.serve runs uvicorn with the HTTP server's limits (docs/DEPLOY.md)
CMD ["python", "-m", "app.serve"]

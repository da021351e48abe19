# syntax=docker/dockerfile:1
# The lrstudy service image: the `lrstudy` command with both Keras backends, TensorFlow and
# JAX, on NVIDIA GPUs. KERAS_BACKEND (default tensorflow) is chosen at run time; a study's
# workers run its train.backend (docs/performance.md, "The GPU image").
#
# Base: python:3.11-slim-bookworm, not an nvidia/cuda image. `tensorflow[and-cuda]` and
# `jax[cuda12]` install the CUDA and cuDNN libraries they were built against as pip packages
# (nvidia-cudnn-cu12, nvidia-cublas-cu12, ...), so a CUDA base image would only add a second
# copy of several GB that may not match. One pip call resolves both backends' CUDA requirements
# together, so that they share one copy. The host needs the NVIDIA driver and the NVIDIA
# Container Toolkit, which mounts the driver (libcuda, nvidia-smi) into the container when a
# GPU is requested.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lrstudy
ENV PATH=/opt/lrstudy/bin:$PATH
# Both backends with their CUDA libraries are most of the image and change rarely: their own
# layer, so that a code change rebuilds only the small layer below. The requirements are the
# package's `gpu` and `jax-cuda` extras (tests/test_deploy.py keeps them equal).
RUN pip install "tensorflow[and-cuda]>=2.18" "jax[cuda12]>=0.4.30"
COPY pyproject.toml README.md /src/
COPY trainer /src/trainer
COPY storage /src/storage
COPY study /src/study
RUN pip install "/src[gpu,jax-cuda]"

FROM python:${PYTHON_VERSION}-slim-bookworm
# tini is PID 1 (the ENTRYPOINT), as `docker run --init` would make it, for Kubernetes, which has
# no such option: the kernel drops a signal that PID 1 has no handler for, so a bare `lrstudy
# dashboard` would ignore the pod's SIGTERM until the SIGKILL at the end of the grace period.
# tini passes signals on to lrstudy and reaps orphaned processes. Debian's package, unpinned:
# the base image's tag fixes the release, whose security updates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/lrstudy lrstudy \
    && mkdir -p /data /cache /artifacts /work \
    && chown lrstudy:lrstudy /cache /artifacts /work
COPY --from=build /opt/lrstudy /opt/lrstudy
# /cache holds the decoded image cache (platformdirs honours XDG_CACHE_HOME) and Keras' downloaded
# ImageNet weights; compose mounts a volume there, and the volume takes this folder's owner.
# GPU memory on demand for both backends, so that several workers share one GPU
# (`launch --per-gpu K`, which also caps each JAX worker at its share) and a worker started
# directly (`lrstudy worker`) does not take 75% of the GPU at start, as JAX does by default.
ENV PATH=/opt/lrstudy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=tensorflow \
    XDG_CACHE_HOME=/cache \
    KERAS_HOME=/cache/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["tini", "--", "lrstudy"]
CMD ["--help"]

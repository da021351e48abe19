# syntax=docker/dockerfile:1
# The lrstudy service image: the `lrstudy` command with TensorFlow on NVIDIA GPUs.
#
# Base: python:3.11-slim-bookworm, not an nvidia/cuda image. `tensorflow[and-cuda]` installs the
# exact CUDA and cuDNN libraries its wheel was built against as pip packages (nvidia-cudnn-cu12,
# nvidia-cublas-cu12, ...), so a CUDA base image would only add a second copy of several GB that
# may not match. The host needs the NVIDIA driver and the NVIDIA Container Toolkit, which mounts
# the driver (libcuda, nvidia-smi) into the container when a GPU is requested.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lrstudy
ENV PATH=/opt/lrstudy/bin:$PATH
# TensorFlow with its CUDA libraries is most of the image and changes rarely: its own layer, so
# that a code change rebuilds only the small layer below.
RUN pip install "tensorflow[and-cuda]>=2.18"
COPY pyproject.toml README.md /src/
COPY trainer /src/trainer
COPY storage /src/storage
COPY study /src/study
RUN pip install /src

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/lrstudy lrstudy \
    && mkdir -p /data /cache /artifacts /work \
    && chown lrstudy:lrstudy /cache /artifacts /work
COPY --from=build /opt/lrstudy /opt/lrstudy
# /cache holds the decoded image cache (platformdirs honours XDG_CACHE_HOME) and Keras' downloaded
# ImageNet weights; compose mounts a volume there, and the volume takes this folder's owner.
# Allow-growth lets several workers share one GPU (`launch --per-gpu K`) instead of the first
# taking all of its memory.
ENV PATH=/opt/lrstudy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=tensorflow \
    XDG_CACHE_HOME=/cache \
    KERAS_HOME=/cache/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["lrstudy"]
CMD ["--help"]

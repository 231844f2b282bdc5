#!/usr/bin/env bash
# Build the image (see docker/README.md).
#   docker/build.sh local        # CPU test image tsa-training:local, offline: engine, base image, wheelhouse, build
#   docker/build.sh production   # tsa-training, CUDA 12.8: pulls nvidia/cuda from Docker Hub and packages
#                                # from download.pytorch.org and PyPI, so it needs a registry (not available here)
# Extra arguments go to `docker build` (e.g. --no-cache). TAG overrides the image tag.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-local}"
shift || true

# Runs a step and prints how long it took.
timed() {
  local start=$SECONDS
  "$@"
  echo "build: '$*' took $((SECONDS - start))s"
}

case "$mode" in
  local)
    timed docker/engine.sh start
    timed docker/base_image.sh
    timed docker/wheelhouse.sh
    timed docker build -t "${TAG:-tsa-training:local}" \
      --build-arg BASE_IMAGE=local/debian:bookworm-py \
      --build-arg APT_PACKAGES= \
      --build-arg BUILD_PACKAGES= \
      --build-arg PIP_NO_INDEX=1 \
      --build-arg PIP_FIND_LINKS=/tmp/wheelhouse \
      "$@" .
    ;;
  production)
    timed docker build -t "${TAG:-tsa-training}" "$@" .
    ;;
  *)
    echo "usage: $0 [local|production] [docker build options]" >&2
    exit 2
    ;;
esac
docker image ls "${TAG:-tsa-training}"

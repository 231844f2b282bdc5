# tsa-training image. Production: docker build -t tsa-training .
# The local test image uses the same file with build arguments (see docker/README.md).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# Extra apt packages: the CUDA base has no Python; a local base that already has it passes "".
ARG APT_PACKAGES="python3 python3-venv"
# Where torch comes from: the CUDA 12.8 wheel index in production, a wheelhouse locally.
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_INDEX_ARGS="--extra-index-url https://download.pytorch.org/whl/cu128"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONIOENCODING=UTF-8 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN if [ -n "${APT_PACKAGES}" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

COPY docker/wheelhouse/ /tmp/wheelhouse/
RUN pip install ${PIP_INDEX_ARGS} --find-links /tmp/wheelhouse "${TORCH_SPEC}" \
    && rm -rf /tmp/wheelhouse

COPY pyproject.toml README.md /tmp/tsa/
COPY code/ /tmp/tsa/code/
RUN pip install ${PIP_INDEX_ARGS} "${TORCH_SPEC}" /tmp/tsa \
    && rm -rf /tmp/tsa \
    && useradd --create-home --uid 1000 tsa

WORKDIR /opt/ml
ENTRYPOINT ["tsa"]
CMD ["train"]

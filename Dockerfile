# tsa-training image. One file, two builds; only build arguments differ (docker/README.md):
#   production (CUDA 12.8, Python 3.12; needs registry + PyPI access):  docker build -t tsa-training .
#   local CPU test image, offline from docker/wheelhouse:               docker/build.sh local
# SageMaker runs `docker run IMAGE train`: the exec-form ENTRYPOINT makes that `tsa train`, as PID 1.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- python: base + interpreter + user; shared by the two stages below, so it is built once.
FROM ${BASE_IMAGE} AS python
# The CUDA base has no Python. The local base (local/debian:bookworm-py) has it and passes "".
ARG APT_PACKAGES="python3 python3-venv"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONIOENCODING=UTF-8 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# uid 1000 is for `docker run --user 1000`; USER stays root because SageMaker mounts /opt/ml as root.
# ubuntu:24.04 (under the CUDA image) already has a user "ubuntu" with uid 1000: it gives way to tsa.
RUN if [ -n "${APT_PACKAGES}" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${APT_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && old_user="$(getent passwd 1000 | cut -d: -f1 || true)" \
    && if [ -n "${old_user}" ]; then userdel --remove "${old_user}" 2>/dev/null || userdel "${old_user}"; fi \
    && useradd --create-home --uid 1000 --shell /bin/bash tsa

# ---- deps: /opt/venv with torch and the project's dependencies. Not part of the final image, so the
# wheelhouse copied in here costs nothing there. Depends on pyproject.toml only, never on code/.
FROM python AS deps
ARG TORCH_VERSION=2.13.0
# sagemaker-training is an sdist with a small C extension: the compiler lives in this stage only.
# The local build passes "": its wheelhouse holds the wheel, built on the host.
ARG BUILD_PACKAGES="gcc python3-dev"
RUN if [ -n "${BUILD_PACKAGES}" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# Where pip looks. Production: torch from the PyTorch CUDA 12.8 index, the rest from PyPI.
# The local build passes PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse: pip reads them from the
# environment (left unset here, they stay unset) and then ignores every index URL.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY docker/wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml docker/requirements.py /tmp/tsa/
# pyproject.toml's optional-dependency groups to install, space-separated (unquoted below); "" = none.
ARG TSA_EXTRAS=tracking
# torch is named again so that nothing can swap the build installed above; setuptools builds the project.
RUN python3 /tmp/tsa/requirements.py /tmp/tsa/pyproject.toml ${TSA_EXTRAS} >/tmp/tsa/requirements.txt \
    && pip install "torch==${TORCH_VERSION}" "setuptools>=68" --requirement /tmp/tsa/requirements.txt

# ---- final image: the venv, then the project code in its own small layer (a code change rebuilds only that).
FROM python
ARG BASE_IMAGE
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="tsa-training" \
      org.opencontainers.image.description="SageMaker-style training container for the Temporal Self-Attention models" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      tsa.torch.version="${TORCH_VERSION}"
COPY --from=deps /opt/venv /opt/venv
COPY pyproject.toml README.md /tmp/tsa/
COPY code/ /tmp/tsa/code/
# No index needed: dependencies are in the venv and setuptools builds the project in place.
RUN pip install --no-deps --no-build-isolation /tmp/tsa \
    && rm -rf /tmp/tsa \
    && pip check

ENTRYPOINT ["tsa"]
CMD ["train"]

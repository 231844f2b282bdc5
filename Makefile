# tsa-training: every command a user or CI runs. Python comes from .venv (made on first use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# SDK v3 cannot share an environment with v2 (v3 has no Estimator): its tests run in their own venv.
VENV_V3 := .venv-v3
STAMP_V3 := $(VENV_V3)/.installed

.PHONY: install install-v3 run test test-container lint schema clean bench bench-serving bench-data gpu-check gpu-wheels mkl-path bench-runs
.PHONY: install-deploy-check test-deploy

install: $(STAMP)

install-v3: $(STAMP_V3)

$(STAMP_V3): pyproject.toml
	$(PYTHON) -m venv $(VENV_V3)
	$(VENV_V3)/bin/pip install --quiet torch==2.13.0
	$(VENV_V3)/bin/pip install --quiet torch==2.13.0 -e '.[sdk-v3]'
	touch $(STAMP_V3)

# torch is pinned and installed first so nothing can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

# The main job on its embedded default: synthetic data, local /opt/ml-shaped folder, no Docker.
run: install
	$(BIN)/python local_mode/run.py --hyperparameters hyperparameters/smoke.json --synth --job-dir runs/smoke --fresh

test: install install-v3
	$(BIN)/pytest -n 2 --dist loadgroup tests/unit tests/equivalence $(PYTEST_ARGS)
	$(VENV_V3)/bin/pytest -m "not container" tests/sdk_v3 $(PYTEST_ARGS)

# The deploy check (docs/serving.md): models this project trains, served by the SageMaker PyTorch inference
# toolkit and TorchServe under the torch of the newest AWS PyTorch inference image the SDK resolves (2.6.0;
# toolkit 2.0.25 and TorchServe 0.12.0 as in that image; pyyaml, which TorchServe's workers import), in a venv
# of its own. PyPI's torch wheels are CUDA builds: pip fetches their nvidia-* wheels too (5-7 GB a venv).
# Another torch: make test-deploy DEPLOY_TORCH=2.9.1. The versions are pinned, so the machine's cap on torch
# (a pip constraint file) is not applied here (-c /dev/null).
DEPLOY_TORCH ?= 2.6.0
DEPLOY_TOOLKIT := 2.0.25
DEPLOY_TORCHSERVE := 0.12.0
VENV_DEPLOY := .venv-deploy-torch$(DEPLOY_TORCH)

install-deploy-check: $(VENV_DEPLOY)/.installed

$(VENV_DEPLOY)/.installed:
	$(PYTHON) -m venv $(VENV_DEPLOY)
	$(VENV_DEPLOY)/bin/pip install --quiet -c /dev/null torch==$(DEPLOY_TORCH) numpy "setuptools<81" \
	  sagemaker-pytorch-inference==$(DEPLOY_TOOLKIT) torchserve==$(DEPLOY_TORCHSERVE) \
	  torch-model-archiver==$(DEPLOY_TORCHSERVE) pyyaml
	touch $@

test-deploy: install install-deploy-check
	TSA_DEPLOY_PYTHON=$(VENV_DEPLOY)/bin/python TSA_DEPLOY_TORCH=$(DEPLOY_TORCH) $(BIN)/pytest tests/deploy -v -s $(PYTEST_ARGS)

# Builds the local image (installing and starting a Docker engine if needed), then runs the image for real.
test-container: install install-v3
	docker/build.sh local
	$(BIN)/pytest -m container tests/container -v $(PYTEST_ARGS)
	$(VENV_V3)/bin/pytest -m container tests/sdk_v3 -v $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check code tests local_mode bench
	$(BIN)/hadolint Dockerfile

# Generated files under hyperparameters/ (tests fail when they are stale).
schema: install
	$(BIN)/tsa schema > hyperparameters/schema.json
	cp code/tsa/metric_definitions.json hyperparameters/metric_definitions.json

# Benchmarks (not tests): throughput of exact vs fast mode (CPU here: small batches, few steps) and
# the data loader vs the legacy per-sample loader. Both print JSON lines with side-by-side ratios.
bench: install
	$(BIN)/python bench/model_step.py
	$(BIN)/python bench/data_loading.py --skip-memory

bench-serving: install run
	$(BIN)/python bench/serving.py

bench-data: install
	$(BIN)/python bench/data_loading.py

# Whole legacy runs trained three ways (exact on both MKL paths, fast mode): AUC gaps to the legacy run.
bench-runs: install
	$(BIN)/python bench/run_fixtures.py

# On a lent GPU machine (device tool): run(command="make gpu-check", carry=[".whl"]).
gpu-check:
	bash bench/gpu_check.sh

# The wheels the GPU image lacks (cp312, manylinux x86_64), into .whl/ (git-ignored), for gpu-check.
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 safetensors==0.8.0 \
	  matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 pillow==13.0.0 \
	  pyparsing==3.3.3

# Shims that choose Intel MKL's code path (tests/equivalence/mkl_path.c; docs/legacy_equivalence.md).
mkl-path:
	mkdir -p .build
	cc -shared -fPIC -O2 -DMKL_PATH_INTEL=1 -o .build/libmkl_path_intel.so tests/equivalence/mkl_path.c
	cc -shared -fPIC -O2 -DMKL_PATH_INTEL=0 -o .build/libmkl_path_generic.so tests/equivalence/mkl_path.c

clean:
	rm -rf $(VENV) $(VENV_V3) .venv-deploy-torch* .pytest_cache .ruff_cache .build

# Container image (docker/README.md). `image` builds the local CPU test image tsa-training:local offline;
# docker-up/docker-down start/stop a private Docker engine if the machine has none running.
.PHONY: image docker-up docker-down

image:
	docker/build.sh local

docker-up:
	docker/engine.sh start

docker-down:
	docker/engine.sh stop

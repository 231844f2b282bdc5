# tsa-training: every command a user or CI runs. Python comes from .venv (made on first use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-container lint schema clean

install: $(STAMP)

# torch is pinned and installed first so nothing can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

# The main job on its embedded default: synthetic data, local /opt/ml-shaped folder, no Docker.
run: install
	$(BIN)/python local_mode/run.py --hyperparameters hyperparameters/smoke.json --synth --job-dir runs/smoke --fresh

test: install
	$(BIN)/pytest -n 2 tests/unit tests/equivalence $(PYTEST_ARGS)

# Builds the local image (installing and starting a Docker engine if needed), then runs the image for real.
test-container: install
	docker/build.sh local
	$(BIN)/pytest -m container tests/container -v $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check code tests local_mode bench
	$(BIN)/hadolint Dockerfile

# Generated files under hyperparameters/ (tests fail when they are stale).
schema: install
	$(BIN)/tsa schema > hyperparameters/schema.json
	cp code/tsa/metric_definitions.json hyperparameters/metric_definitions.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Container image (docker/README.md). `image` builds the local CPU test image tsa-training:local offline;
# docker-up/docker-down start/stop a private Docker engine if the machine has none running.
.PHONY: image docker-up docker-down

image:
	docker/build.sh local

docker-up:
	docker/engine.sh start

docker-down:
	docker/engine.sh stop

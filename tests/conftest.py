"""Shared fixtures: a fake `/opt/ml` job folder under tmp_path.

Run the whole suite with `make test` (or `.venv/bin/pytest`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMETERS_DIR = REPO_ROOT / "hyperparameters"


def load_example(name: str) -> dict[str, str]:
    """A shipped hyperparameter example (`hyperparameters/<name>.json`)."""
    return json.loads((HYPERPARAMETERS_DIR / f"{name}.json").read_text())


def write_job(
    root: Path,
    hyperparameters: Mapping[str, Any] | str,
    *,
    channels: tuple[str, ...] = ("train",),
    inputdataconfig: Mapping[str, Any] | None = None,
    resourceconfig: Mapping[str, Any] | None = None,
) -> Path:
    """Write an `/opt/ml`-shaped folder; a str `hyperparameters` is written verbatim."""
    config_dir = root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    text = hyperparameters if isinstance(hyperparameters, str) else json.dumps(dict(hyperparameters))
    (config_dir / "hyperparameters.json").write_text(text)
    if inputdataconfig is not None:
        (config_dir / "inputdataconfig.json").write_text(json.dumps(inputdataconfig))
    if resourceconfig is not None:
        (config_dir / "resourceconfig.json").write_text(json.dumps(resourceconfig))
    for channel in channels:
        (root / "input" / "data" / channel).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def job_root(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `job_root(hyperparameters, channels=..., ...)` -> the job folder."""

    def make(hyperparameters: Mapping[str, Any] | str, **kwargs: Any) -> Path:
        return write_job(tmp_path / "opt_ml", hyperparameters, **kwargs)

    return make


@pytest.fixture(autouse=True)
def _restore_sm_environment() -> Iterator[None]:
    """A job run in-process exports `SM_*` into `os.environ` (`tsa.toolkit`): keep it out of later tests."""
    before = {key: value for key, value in os.environ.items() if key.startswith("SM_")}
    yield
    for key in [key for key in os.environ if key.startswith("SM_") and key not in before]:
        del os.environ[key]
    os.environ.update(before)

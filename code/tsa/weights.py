"""The project's weight format: `model.safetensors` (project keys) + `config.json` (resolved config).

Project keys are the model's state-dict keys with each shared tensor once, under its first
(canonical) name: the shared embedding tables (legacy quirk Q16) appear under several legacy keys,
and safetensors refuses aliased tensors. `save_weights` is the only writer of the pair (the job's
artifacts, `tsa legacy import`); `load_weights` rebuilds the model from it (serving, export).
"""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from tsa.config import SECTIONS, JobConfig
from tsa.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def write_safetensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Serialise in memory, then write with Python's file I/O.

    So a full disk or a read-only folder is an `OSError` naming the file: safetensors' own writer
    raises an untyped error, and torch's aborts the whole process from a C++ destructor.
    """
    path.write_bytes(safetensors_bytes(dict(tensors)))


def write_torch(obj: object, path: Path) -> None:
    """`torch.save` into memory, then written as `write_safetensors`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getbuffer())


def versions() -> dict[str, str]:
    """The software a model was trained with (stored in `config.json`)."""
    return {"tsa-training": version("tsa-training"), "torch": torch.__version__, "lightning": version("lightning"),
            "python": platform.python_version()}


def alias_groups(model: nn.Module) -> dict[str, list[str]]:
    """Canonical key -> every state-dict key that names the same tensor (shared tables, Q16)."""
    groups: dict[str, list[str]] = {}
    by_tensor: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        canonical = by_tensor.setdefault(id(tensor), key)
        groups.setdefault(canonical, []).append(key)
    return groups


def project_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Weights under the project keys: each tensor once, under its first (canonical) name."""
    state = model.state_dict()
    return {canonical: state[canonical].detach().contiguous() for canonical in alias_groups(model)}


def load_project_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load project-keyed weights (the inverse of `project_state_dict`)."""
    groups = alias_groups(model)
    full = {alias: state[canonical] for canonical, aliases in groups.items() if canonical in state for alias in aliases}
    missing = sorted(set(groups) - set(state))
    unexpected = sorted(set(state) - set(groups))
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit this model config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(full, strict=True)


def save_weights(model: nn.Module, config: JobConfig, directory: Path) -> None:
    """`model.safetensors` (project keys) and `config.json` (the resolved config) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(project_state_dict(model), directory / WEIGHTS_FILE)
    text = json.dumps({**config.resolved(), "versions": versions()}, indent=2, sort_keys=True) + "\n"
    (directory / CONFIG_FILE).write_text(text)


def read_saved_config(directory: Path) -> JobConfig:
    """The `JobConfig` stored beside saved weights."""
    data = json.loads((directory / CONFIG_FILE).read_text())
    flat = {key: value for name in SECTIONS for key, value in data[name].items()}  # "versions" is not a section
    return JobConfig.from_hyperparameters(flat)


def load_weights(directory: Path) -> tuple[nn.Module, JobConfig]:
    """Rebuild the model saved by `save_weights` (eval mode)."""
    from tsa.models import build_model

    config = read_saved_config(directory)
    model = build_model(config.model)
    load_project_state_dict(model, load_file(str(directory / WEIGHTS_FILE)))
    return model.eval(), config



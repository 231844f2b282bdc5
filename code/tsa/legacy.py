"""Legacy interop: legacy constructor arguments and legacy-keyed weights, in and out.

    tsa legacy import isSmall_0_OrderFeature.pt --hyperparameters hp.json --output-dir weights/
    tsa legacy export weights/ --output isSmall_0_OrderFeature.pt

The models' attribute names *are* the legacy state-dict keys, so weights map key by key; what
this module adds is the file handling around that: DDP `module.` prefixes and checkpoint dicts
(`{"model": ...}`) on the way in, shape checks with a clear message, the shared-table alias
keys (Q16: one tensor under `embedding.weight`, `order_attention.embedding.weight`, ...) on
the way out. The project's own weight format is `tsa.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tsa.config import JobConfig
from tsa.errors import CheckpointError
from tsa.weights import alias_groups, load_weights, save_weights, write_torch


def unwrap_legacy_checkpoint(obj: Any) -> dict[str, Tensor]:
    """A plain state dict from a legacy file: bare, DDP-prefixed, or a `{"model": ...}` checkpoint."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("legacy weight file: expected a state dict of tensors (or a checkpoint with 'model')")
    return {key.removeprefix("module."): value for key, value in obj.items()}


def load_legacy_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load legacy-keyed weights (aliases optional) with key and shape checks."""
    groups = alias_groups(model)
    expected = model.state_dict()
    known = {alias for aliases in groups.values() for alias in aliases}
    unexpected = sorted(set(state) - known)
    missing = sorted(canonical for canonical, aliases in groups.items() if not any(a in state for a in aliases))
    if unexpected or missing:
        raise CheckpointError(
            f"legacy weights do not fit this model config: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}; check model_type and the architecture "
            "hyperparameters against the legacy job's"
        )
    canonical_state: dict[str, Tensor] = {}
    for canonical, aliases in groups.items():
        present = [a for a in aliases if a in state]
        first = state[present[0]]
        for alias in present[1:]:
            if not torch.equal(state[alias], first):
                raise CheckpointError(f"legacy weights: '{alias}' differs from '{present[0]}' (they share one table)")
        if first.shape != expected[canonical].shape:
            raise CheckpointError(
                f"legacy weight '{present[0]}' has shape {tuple(first.shape)}: this model config needs "
                f"{tuple(expected[canonical].shape)}; check the architecture hyperparameters"
            )
        for alias in aliases:
            canonical_state[alias] = first
    model.load_state_dict(canonical_state, strict=True)


def legacy_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Weights under every legacy key, aliases sharing storage as in legacy `state_dict()` files."""
    return dict(model.state_dict())


def import_legacy(weight_file: Path, config: JobConfig, output_dir: Path) -> nn.Module:
    """Legacy `.pt` -> `model.safetensors` + `config.json` in `output_dir`."""
    from tsa.models import build_model

    try:
        obj = torch.load(weight_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"legacy weight file '{weight_file}' cannot be read: {exc}") from exc
    model = build_model(config.model)
    load_legacy_state_dict(model, unwrap_legacy_checkpoint(obj))
    save_weights(model, config, output_dir)
    return model


def export_legacy(weights_dir: Path, output_file: Path) -> None:
    """`model.safetensors` + `config.json` -> a legacy-keyed `.pt` (aliases included)."""
    model, _ = load_weights(weights_dir)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_torch(legacy_state_dict(model), output_file)

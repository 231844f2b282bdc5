"""Legacy weights in and out (`tsa.legacy`, `tsa legacy import|export`).

Run: .venv/bin/pytest tests/unit/test_legacy.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.equivalence.fixtures import cases, load, model_config_from_legacy_kwargs
from tests.inputs import MODEL_TYPES
from tsa.errors import CheckpointError
from tsa.legacy import load_legacy_state_dict, unwrap_legacy_checkpoint
from tsa.models import build_model
from tsa.weights import alias_groups


def _hyperparameters(fx: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in fx["ctor_kwargs"].items() if k not in ("return_seq",)}
    return {**kwargs, "model_type": MODEL_TYPES[fx["target"]]}


def _model_case(model_type: str) -> dict[str, Any]:
    for param in cases("model"):
        entry = param.values[0]
        if MODEL_TYPES[entry["target"]] == model_type and not entry["stretch"]:
            return load(entry)
    raise AssertionError(f"the fixture set has no eval {model_type} model case")


@pytest.mark.parametrize("model_type", ["single", "dual"])
def test_import_then_export_round_trips_keys_and_tensors(tmp_path: Path, model_type: str) -> None:
    fx = _model_case(model_type)
    legacy_file = tmp_path / "legacy.pt"
    torch.save(fx["state_dict"], legacy_file)
    (tmp_path / "hp.json").write_text(json.dumps(_hyperparameters(fx)))
    run = [sys.executable, "-m", "tsa", "legacy"]
    subprocess.run([*run, "import", str(legacy_file), "--hyperparameters", str(tmp_path / "hp.json"),
                    "--output-dir", str(tmp_path / "weights")], check=True, timeout=120)
    assert (tmp_path / "weights/model.safetensors").is_file() and (tmp_path / "weights/config.json").is_file()
    subprocess.run([*run, "export", str(tmp_path / "weights"), "--output", str(tmp_path / "back.pt")],
                   check=True, timeout=120)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(fx["state_dict"])
    for key, tensor in fx["state_dict"].items():
        assert torch.equal(back[key], tensor), key
    assert back["embedding.weight"].data_ptr() == back[next(k for k in back if k.endswith(".embedding.weight"))
                                                        ].data_ptr(), "aliases share one storage, as in legacy"


def test_ddp_prefix_and_checkpoint_dict_are_unwrapped() -> None:
    state = {"module.a": torch.zeros(1)}
    assert list(unwrap_legacy_checkpoint({"model": state, "epoch": 3})) == ["a"]


def test_shape_mismatch_names_the_key() -> None:
    fx = _model_case("single")
    cfg = model_config_from_legacy_kwargs({**fx["ctor_kwargs"], "dim_attn_feedforward": 7}, "single")
    with pytest.raises(CheckpointError, match="has shape"):
        load_legacy_state_dict(build_model(cfg), fx["state_dict"])


def test_wrong_model_type_lists_missing_and_unexpected_keys() -> None:
    fx = _model_case("single")
    cfg = model_config_from_legacy_kwargs(fx["ctor_kwargs"], "dual")
    with pytest.raises(CheckpointError, match="missing key"):
        load_legacy_state_dict(build_model(cfg), fx["state_dict"])


def test_aliases_are_optional_on_import() -> None:
    fx = _model_case("single")
    model = build_model(model_config_from_legacy_kwargs(fx["ctor_kwargs"], "single"))
    canonical_only = {key: fx["state_dict"][key] for key in alias_groups(model)}
    load_legacy_state_dict(model, canonical_only)
    assert torch.equal(model.order_attention.embedding.weight, fx["state_dict"]["embedding.weight"])

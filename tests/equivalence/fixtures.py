"""Reading a legacy fixture folder and mapping its legacy targets onto our modules.

The folder is `$TSA_LEGACY_FIXTURES` (default: the vendored `tests/fixtures/legacy_tsa`); its
`manifest.json` lists the cases. Nothing here names a case id: tests dispatch on `kind` and
`target` only, so any fixture set of the same format runs (../shared/docs/legacy_tsa_fixtures.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tsa.config import ModelConfig
from tsa.models import DualSequenceTSA, SingleSequenceTSA
from tsa.models.attention import AttentionLayer, AttentionLayerPreNorm, TemporalMultiheadAttention
from tsa.models.blocks import FeatureAggregation, TimeEncode, TimeEncoder, compute_fm
from tsa.models.encoders import FeatureAttentionLayer, OrderAttentionLayer
from tsa.models.moe import Experts, MoE, Top2Gating

# The legacy classifiers' constructor arguments that are `ModelConfig` fields (return_seq and the MLP head
# are not: quirks Q32 and Q15, never run by the legacy job).
LEGACY_MODEL_KWARGS = (
    "n_cat_features", "n_num_features", "n_classes", "n_embedding", "seq_len", "n_engineered_num_features",
    "dim_embedding_table", "dim_attn_feedforward", "use_mlp", "num_heads", "dropout", "n_layers_order",
    "n_layers_feature", "emb_tbl_use_bias", "use_moe", "num_experts", "use_time_seq",
)


def model_config_from_legacy_kwargs(kwargs: dict[str, Any], model_type: str) -> ModelConfig:
    """The `ModelConfig` of a legacy classifier case's constructor keyword arguments."""
    assert not kwargs.get("return_seq") and not kwargs.get("use_mlp"), "a legacy case the classifiers never ran"
    return ModelConfig(model_type=model_type, **{key: kwargs[key] for key in LEGACY_MODEL_KWARGS if key in kwargs})


DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_tsa"
FIXTURE_DIR = Path(os.environ.get("TSA_LEGACY_FIXTURES", DEFAULT_DIR))
FORMAT = "legacy_tsa_fixture/v1"


def read_manifest(folder: Path, expected_format: str, env_var: str) -> dict[str, Any]:
    """A fixture folder's `manifest.json`, checked for its format."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no fixture manifest at {path} (set {env_var} to a fixture folder)")
    data = json.loads(path.read_text())
    if data.get("format") != expected_format:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {expected_format!r}")
    return data


def manifest() -> dict[str, Any]:
    return read_manifest(FIXTURE_DIR, FORMAT, "TSA_LEGACY_FIXTURES")


def cases(*kinds: str) -> list[Any]:
    """pytest params (id = case_id) of every manifest case of the given kinds."""
    return [pytest.param(entry, id=entry["case_id"]) for entry in manifest()["cases"] if entry["kind"] in kinds]


def load(entry: dict[str, Any]) -> dict[str, Any]:
    return torch.load(FIXTURE_DIR / entry["file"], weights_only=True)


# --- building our module for a legacy target ----------------------------------------------------


def _embedding(descriptor: dict[str, Any]) -> nn.Embedding:
    assert descriptor["__module__"] == "torch.nn.Embedding", descriptor
    return nn.Embedding(
        descriptor["num_embeddings"], descriptor["embedding_dim"], padding_idx=descriptor["padding_idx"]
    )


def _activation(name: str) -> type[nn.Module]:
    return {"torch.nn.ReLU": nn.ReLU, "torch.nn.GELU": nn.GELU}[name]


def _order_layer(kw: dict[str, Any]) -> nn.Module:
    kw = dict(kw)
    kw["embedding_table"] = _embedding(kw["embedding_table"])
    return OrderAttentionLayer(**kw)


def _feature_layer(kw: dict[str, Any]) -> nn.Module:
    kw = dict(kw)
    kw["embedding_table"] = _embedding(kw["embedding_table"])
    kw["embedding_table_engineered"] = _embedding(kw["embedding_table_engineered"])
    return FeatureAttentionLayer(**kw)


def _experts(kw: dict[str, Any]) -> nn.Module:
    return Experts(kw["dim"], kw["num_experts"], kw["hidden_dim"], _activation(kw["activation"]))


class _Function(nn.Module):
    """A stateless legacy function seen as a module (for `compute_FM_parallel`)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "basic_blocks.TimeEncode": lambda kw: TimeEncode(kw["time_dim"], bias_name="emb_tbl_bias"),
    "TemporalMultiheadAttentionDelta.TimeEncode": lambda kw: TimeEncode(kw["time_dim"], bias_name="bias"),
    "basic_blocks.TimeEncoder": lambda kw: TimeEncoder(kw["time_dim"]),
    "basic_blocks.compute_FM_parallel": lambda kw: _Function(compute_fm),
    "basic_blocks.FeatureAggregation": lambda kw: FeatureAggregation(kw["num_feature"]),
    "TemporalMultiheadAttentionDelta.TemporalMultiheadAttention": lambda kw: TemporalMultiheadAttention(**kw),
    "basic_blocks.AttentionLayer": lambda kw: AttentionLayer(**kw),
    "basic_blocks.AttentionLayerPreNorm": lambda kw: AttentionLayerPreNorm(**kw),
    "mixture_of_experts.MoE": lambda kw: MoE(**kw),
    "mixture_of_experts.Top2Gating": lambda kw: Top2Gating(**kw),
    "mixture_of_experts.Experts": _experts,
    "basic_blocks.OrderAttentionLayer": _order_layer,
    "basic_blocks.FeatureAttentionLayer": _feature_layer,
    "models.OrderFeatureAttentionClassifier": lambda kw: SingleSequenceTSA(
        model_config_from_legacy_kwargs(kw, "single")
    ),
    "models.TwoSeqMoEOrderFeatureAttentionClassifier": lambda kw: DualSequenceTSA(
        model_config_from_legacy_kwargs(kw, "dual")
    ),
}

GRAD_OUTPUT = {
    "TemporalMultiheadAttentionDelta.TemporalMultiheadAttention": "attn_output",
    "mixture_of_experts.Top2Gating": "combine_tensor",
    "models.OrderFeatureAttentionClassifier": "scores",
    "models.TwoSeqMoEOrderFeatureAttentionClassifier": "scores",
}


def build(target: str, ctor_kwargs: dict[str, Any]) -> nn.Module:
    if target not in BUILDERS:
        raise NotImplementedError(f"no builder for legacy target {target!r}: the suite must support it")
    return BUILDERS[target](ctor_kwargs)


def call(target: str, module: nn.Module, inputs: dict[str, Any]) -> dict[str, Tensor]:
    """Call `module` as the legacy generator called the target; outputs named as in the fixture."""
    if target == "TemporalMultiheadAttentionDelta.TemporalMultiheadAttention":
        x = inputs["x"]
        out, weights = module(x, x, x, inputs["time"], key_padding_mask=inputs["key_padding_mask"],
                              attn_mask=inputs["attn_mask"])
        return {"attn_output": out, "attn_weights": weights}
    if target == "mixture_of_experts.Top2Gating":
        dispatch, combine, loss = module(inputs["x"])
        return {"dispatch_tensor": dispatch, "combine_tensor": combine, "loss": loss}
    if target.startswith("models."):
        scores, ensemble = module(**inputs)
        return {"scores": scores, "ensemble": ensemble}
    if target == "basic_blocks.AttentionLayer":
        return {"out": module(inputs["x"], inputs["time"], inputs["attn_mask"], inputs["key_padding_mask"])}
    if target == "basic_blocks.AttentionLayerPreNorm":
        return {"out": module(inputs["x"], inputs["attn_mask"], inputs["key_padding_mask"])}
    if target == "basic_blocks.OrderAttentionLayer":
        return {"out": module(inputs["x_cat"], inputs["x_num"], inputs["time_seq"], inputs["attn_mask"],
                              inputs["key_padding_mask"])}
    if target == "basic_blocks.FeatureAttentionLayer":
        return {"out": module(inputs["x_cat"], inputs["x_num"], inputs["x_engineered"])}
    (only_input,) = inputs.values()
    return {"out": module(only_input)}


def grad_output(target: str) -> str:
    return GRAD_OUTPUT.get(target, "out")

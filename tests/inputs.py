"""Shared test inputs: minimal hyperparameter maps, a small model config, synthetic model inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tsa.config import ModelConfig

# The three hyperparameters without a default, and a slightly smaller table width.
REQUIRED_HP = {"n_cat_features": "40", "n_num_features": "33", "n_embedding": "120"}
GOOD_HP = {**REQUIRED_HP, "dim_embedding_table": "8"}
# A tiny data shape for the data-layer tests.
DATA_HP = {"n_cat_features": "4", "n_num_features": "3", "n_embedding": "43", "n_engineered_num_features": "2",
           "seq_len": "5", "dim_embedding_table": "4", "batch_size": "8"}
# A small model (ModelConfig keyword arguments) for forward/backward tests.
SMALL_MODEL = dict(n_cat_features=33, n_num_features=32, n_embedding=100, n_engineered_num_features=2, seq_len=6,
                   dim_embedding_table=4, dim_attn_feedforward=8, num_heads=2, n_layers_order=1, n_layers_feature=1)
# Legacy classifier targets of the module fixtures -> our model types.
MODEL_TYPES = {"models.OrderFeatureAttentionClassifier": "single",
               "models.TwoSeqMoEOrderFeatureAttentionClassifier": "dual"}


def sequence(cfg: ModelConfig, b: int, padded: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One left-padded order sequence (`padded[i]` padded rows in example i): float ids, values, time in
    seconds (0 for the current order) and the (B, L+1) padding mask (last column, the dummy: False)."""
    length = cfg.seq_len
    not_padded = torch.tensor([[0.0] * p + [1.0] * (length - p) for p in padded])
    x_cat = torch.randint(1, cfg.n_embedding - cfg.n_num_features, (b, length, cfg.n_cat_features),
                          generator=generator)
    x_num = torch.rand(b, length, cfg.n_num_features, generator=generator) * not_padded.unsqueeze(-1)
    time = torch.rand(b, length, 1, generator=generator) * 1e6 * not_padded.unsqueeze(-1)
    time[:, -1] = 0
    kpm = torch.logical_not(F.pad(not_padded, (0, 1), value=1.0).bool())
    return {"x_cat": (x_cat * not_padded.unsqueeze(-1)).float(), "x_num": x_num, "time": time, "kpm": kpm}


def single_inputs(cfg: ModelConfig, b: int = 4, padded: list[int] | None = None,
                  seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of the single-sequence model's forward."""
    g = torch.Generator().manual_seed(seed)
    s = sequence(cfg, b, padded or [0] * b, g)
    engineered = torch.rand(b, cfg.n_engineered_num_features, generator=g, dtype=torch.float64)
    return {"x_cat": s["x_cat"], "x_num": s["x_num"], "x_engineered": engineered, "time_seq": s["time"],
            "attn_mask": None, "key_padding_mask": s["kpm"]}


def dual_inputs(cfg: ModelConfig, ccid_padded: list[int]) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of the dual-sequence model's forward (`ccid_padded`: padded ccid rows per example)."""
    cid = single_inputs(cfg, b=len(ccid_padded), seed=1)
    ccid = single_inputs(cfg, b=len(ccid_padded), padded=ccid_padded, seed=2)
    return {"x_seq_cat_cid": cid["x_cat"], "x_seq_num_cid": cid["x_num"], "time_seq_cid": cid["time_seq"],
            "x_seq_cat_ccid": ccid["x_cat"], "x_seq_num_ccid": ccid["x_num"], "time_seq_ccid": ccid["time_seq"],
            "x_engineered": cid["x_engineered"], "attn_mask": None, "key_padding_mask_cid": cid["key_padding_mask"],
            "key_padding_mask_ccid": ccid["key_padding_mask"]}

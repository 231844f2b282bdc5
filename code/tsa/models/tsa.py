"""Single-sequence TSA classifier (legacy `OrderFeatureAttentionClassifier`, spec §4.1).

    scores, ensemble = SingleSequenceTSA(cfg.model)(x_cat, x_num, x_engineered, time_seq,
                                                    attn_mask=None, key_padding_mask=kpm)

Order attention over the history (2d) and feature attention over the current order (d) are
concatenated (3d) and classified by Linear(3d->1024)-ReLU-Dropout-Linear(1024->n_classes).
Attribute names are the legacy state-dict keys; the shared table appears under `embedding`,
`order_attention.embedding` and `feature_attention.embedding` (Q16), exactly as in legacy.

Differences from legacy: none by default; `cfg.fix_*` flags switch on the documented fixes.
Quirks kept: the unused top-level `layer_norm` and `dropout` (Q11); `use_mlp` is rejected in
the config (Q15). Construction order is the legacy global-RNG draw order (spec §4.4).

Served as this plain module, built from `config.json` by the handler (package docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import torch
from torch import Tensor, nn

from .encoders import FeatureAttentionLayer, OrderAttentionLayer
from .moe import SecondPolicy

if TYPE_CHECKING:
    from tsa.config import ModelConfig

CLASSIFIER_HIDDEN = 1024  # hard-coded in legacy


def moe_eval_policy(cfg: ModelConfig) -> SecondPolicy:
    """Legacy draws random numbers in eval (Q4); the fix makes eval deterministic."""
    return "threshold" if cfg.fix_moe_eval_deterministic else "random"


def build_classifier_head(dim_in: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, CLASSIFIER_HIDDEN), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(CLASSIFIER_HIDDEN, n_classes))


def build_order_attention(cfg: ModelConfig, table: nn.Embedding, fused_attention: bool) -> OrderAttentionLayer:
    """An order-attention encoder with the user's architecture settings."""
    return OrderAttentionLayer(
        n_cat_features=cfg.n_cat_features, n_num_features=cfg.n_num_features, n_embedding=cfg.n_embedding,
        seq_len=cfg.seq_len, dim_embed=2 * cfg.dim_embedding_table, dim_attn_feedforward=cfg.dim_attn_feedforward,
        embedding_table=table, num_heads=cfg.num_heads, dropout=cfg.dropout, n_layers_order=cfg.n_layers_order,
        emb_tbl_use_bias=cfg.emb_tbl_use_bias, use_moe=cfg.use_moe, num_experts=cfg.num_experts,
        use_time_seq=cfg.use_time_seq, moe_eval_policy=moe_eval_policy(cfg),
        floor_aggregation_widths=cfg.fix_feature_aggregation_widths, fused_attention=fused_attention,
    )


def build_feature_attention(cfg: ModelConfig, table: nn.Embedding, engineered: nn.Embedding,
                            fused_attention: bool) -> FeatureAttentionLayer:
    """A feature-attention encoder with the user's architecture settings."""
    return FeatureAttentionLayer(
        n_cat_features=cfg.n_cat_features, n_num_features=cfg.n_num_features, n_embedding=cfg.n_embedding,
        n_engineered_num_features=cfg.n_engineered_num_features, dim_embed=2 * cfg.dim_embedding_table,
        dim_attn_feedforward=cfg.dim_attn_feedforward, embedding_table=table, embedding_table_engineered=engineered,
        num_heads=cfg.num_heads, dropout=cfg.dropout, n_layers_feature=cfg.n_layers_feature,
        emb_tbl_use_bias=cfg.emb_tbl_use_bias, use_moe=cfg.use_moe, num_experts=cfg.num_experts,
        moe_eval_policy=moe_eval_policy(cfg), fused_attention=fused_attention,
    )


class SingleSequenceTSA(nn.Module):
    """Order + feature attention over one order history; returns `(scores, ensemble)`."""

    use_time_seq: Final[bool]

    def __init__(self, cfg: ModelConfig, fused_attention: bool = False) -> None:
        super().__init__()
        d = cfg.dim_embedding_table
        self.config = cfg
        self.use_time_seq = cfg.use_time_seq
        self.embedding = nn.Embedding(cfg.n_embedding + 2, d, padding_idx=0)
        self.order_attention = build_order_attention(cfg, self.embedding, fused_attention)
        self.embedding_engineered = nn.Embedding(cfg.n_engineered_num_features + 1, d, padding_idx=0)
        self.feature_attention = build_feature_attention(cfg, self.embedding, self.embedding_engineered,
                                                         fused_attention)
        self.layer_norm = nn.LayerNorm(2 * d)  # unused in this model (Q11)
        self.dropout = nn.Dropout(cfg.dropout)  # unused (Q11)
        self.clf = build_classifier_head(3 * d, cfg.n_classes, cfg.dropout)

    def forward(
        self,
        x_cat: Tensor,
        x_num: Tensor,
        x_engineered: Tensor | None,
        time_seq: Tensor | None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        order = self.order_attention(x_cat, x_num, time_seq if self.use_time_seq else None, attn_mask,
                                     key_padding_mask)  # (B, 2d)
        current = self.feature_attention(x_cat, x_num, x_engineered)  # (B, d)
        ensemble = torch.cat([order, current], dim=-1)  # (B, 3d)
        return self.clf(ensemble), ensemble


"""Dual-sequence TSA classifier (legacy `TwoSeqMoEOrderFeatureAttentionClassifier`, spec §4.2).

Two order-attention encoders (customer-id "cid" and credit-card-id "ccid" histories) share one
table; one small gate network (`gate_emb`, applied to both sequences) and `gate_score` weigh
them; the feature attention reads the cid sequence's current order.

Differences from legacy (default: none). Quirks kept on purpose:
- Q1: the ccid gate is zeroed for rows whose ccid key-padding mask has exactly 50 True entries
  (with 51-row data: "only the current order"). `fix_gate_history_rule` derives the rule from
  the shape instead (every ccid history row padded).
- Q2: gates are not renormalised; rows with g_ccid <= 0.05 get a zero ccid vector but keep
  their weight; the ccid encoder runs on the sub-batch of kept rows (changes MoE capacity and
  RNG draw shapes); the gate network's sizes are fixed (16/32/128, 1 head, 1 layer, no time).
- Q34: `key_padding_mask_ccid` is required.

Fast mode (`fused_attention=True`) trains with static shapes instead, so the training step
compiles whole (no `nonzero`, no host read): the ccid encoder runs on every row and the rows with
g_ccid <= 0.05 get the zero vector by masking. Numerical contract: eval (validation, scoring,
serving) keeps the sub-batch, so it is the exact path's forward (fixture-tested within 1e-5); in
training, without MoE, each kept row's ccid vector is the one the sub-batch gives (the encoder is
row-wise; dropout masks are drawn for all rows, so the draws differ), and with MoE the ccid experts
route the whole batch (capacity from all rows, second-expert draws of shape (S, B)), so a kept
row's vector differs from the exact path's whenever some row is dropped. The row rule (zero vector,
weights not renormalised) is the same; fast-mode training's AUC contract covers the rest.

The ccid sub-batch is chosen at run time (so the model could not be traced). The gate threshold
0.05 and the Q1 literal 50 are literals in the forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import torch
from torch import Tensor, nn

from .encoders import OrderAttentionLayer
from .tsa import build_classifier_head, build_feature_attention, build_order_attention

if TYPE_CHECKING:
    from tsa.config import ModelConfig

GATE_TABLE_DIM = 16
GATE_EMBED_DIM = 32
GATE_FEEDFORWARD = 128
GATE_HIDDEN = 256


class DualSequenceTSA(nn.Module):
    """cid + ccid order attention mixed by a learned gate, plus cid feature attention."""

    use_time_seq: Final[bool]
    fix_gate_history_rule: Final[bool]
    static_ccid: Final[bool]
    order_width: Final[int]

    def __init__(self, cfg: ModelConfig, fused_attention: bool = False) -> None:
        super().__init__()
        d = cfg.dim_embedding_table
        self.config = cfg
        self.use_time_seq = cfg.use_time_seq
        self.fix_gate_history_rule = cfg.fix_gate_history_rule
        self.static_ccid = fused_attention  # fast-mode training: every row through the ccid encoder, then masked
        self.order_width = 2 * d  # what the order encoders return per row
        self.embedding = nn.Embedding(cfg.n_embedding + 2, d, padding_idx=0)
        self.order_attention_cid = build_order_attention(cfg, self.embedding, fused_attention)
        self.order_attention_ccid = build_order_attention(cfg, self.embedding, fused_attention)
        self.embedding_gate = nn.Embedding(cfg.n_embedding + 2, GATE_TABLE_DIM, padding_idx=0)
        self.gate_emb = OrderAttentionLayer(
            n_cat_features=cfg.n_cat_features, n_num_features=cfg.n_num_features, n_embedding=cfg.n_embedding,
            seq_len=cfg.seq_len, dim_embed=GATE_EMBED_DIM, dim_attn_feedforward=GATE_FEEDFORWARD,
            embedding_table=self.embedding_gate, num_heads=1, dropout=cfg.dropout, n_layers_order=1,
            emb_tbl_use_bias=cfg.emb_tbl_use_bias, use_moe=False, num_experts=1, use_time_seq=False,
            floor_aggregation_widths=cfg.fix_feature_aggregation_widths, fused_attention=fused_attention,
        )
        self.gate_score = nn.Sequential(
            nn.Linear(2 * GATE_EMBED_DIM, GATE_HIDDEN), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(GATE_HIDDEN, 2),
            nn.Softmax(dim=1),
        )
        self.embedding_engineered = nn.Embedding(cfg.n_engineered_num_features + 1, d, padding_idx=0)
        self.feature_attention = build_feature_attention(cfg, self.embedding, self.embedding_engineered,
                                                         fused_attention)
        self.layer_norm = nn.LayerNorm(2 * d)
        self.dropout = nn.Dropout(cfg.dropout)  # unused (Q11)
        self.clf = build_classifier_head(3 * d, cfg.n_classes, cfg.dropout)

    def no_ccid_history(self, key_padding_mask_ccid: Tensor) -> Tensor:
        """Rows whose ccid gate is forced to 0 (legacy: exactly 50 padded positions, Q1)."""
        if self.fix_gate_history_rule:
            return key_padding_mask_ccid[:, :-2].all(dim=1)  # every history row padded
        return key_padding_mask_ccid.sum(dim=1) == 50  # quirk Q1: right only for 51-row data

    def forward(
        self,
        x_seq_cat_cid: Tensor,
        x_seq_num_cid: Tensor,
        time_seq_cid: Tensor | None,
        x_seq_cat_ccid: Tensor,
        x_seq_num_ccid: Tensor,
        time_seq_ccid: Tensor | None,
        x_engineered: Tensor | None,
        attn_mask: Tensor | None = None,
        key_padding_mask_cid: Tensor | None = None,
        key_padding_mask_ccid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if key_padding_mask_ccid is None:
            raise ValueError("DualSequenceTSA needs key_padding_mask_ccid (legacy quirk Q34)")
        gate_cid = self.gate_emb(x_seq_cat_cid, x_seq_num_cid, time_seq_cid, attn_mask, key_padding_mask_cid)
        gate_ccid = self.gate_emb(x_seq_cat_ccid, x_seq_num_ccid, time_seq_ccid, attn_mask, key_padding_mask_ccid)
        gate = self.gate_score(torch.cat([gate_cid, gate_ccid], dim=-1))  # (B, 2)
        t_cid, t_ccid = (time_seq_cid, time_seq_ccid) if self.use_time_seq else (None, None)
        order_cid = self.order_attention_cid(x_seq_cat_cid, x_seq_num_cid, t_cid, attn_mask, key_padding_mask_cid)
        if self.static_ccid and self.training:
            gate_ccid_weight = gate[:, 1].masked_fill(self.no_ccid_history(key_padding_mask_ccid), 0.0)
            gate = torch.stack([gate[:, 0], gate_ccid_weight], dim=1)  # not renormalised (Q2)
            every_row = self.order_attention_ccid(x_seq_cat_ccid, x_seq_num_ccid, t_ccid, attn_mask,
                                                  key_padding_mask_ccid)
            order_ccid = every_row.to(gate.dtype).masked_fill(~(gate[:, 1] > 0.05).unsqueeze(1), 0.0)
        else:
            gate = gate.clone()
            gate[self.no_ccid_history(key_padding_mask_ccid), 1] = 0  # not renormalised (Q2)
            keep = torch.nonzero(gate[:, 1] > 0.05).squeeze(1)
            order_ccid = torch.zeros(x_seq_cat_cid.shape[0], self.order_width, dtype=gate.dtype, device=gate.device)
            if keep.numel() > 0:
                order_ccid[keep] = self.order_attention_ccid(
                    x_seq_cat_ccid[keep], x_seq_num_ccid[keep], t_ccid[keep] if t_ccid is not None else None,
                    attn_mask, key_padding_mask_ccid[keep],
                ).to(order_ccid.dtype)  # sub-batch of the kept rows (Q2)
        current = self.feature_attention(x_seq_cat_cid, x_seq_num_cid, x_engineered)  # cid only
        order = self.layer_norm(gate[:, 0:1] * order_cid + gate[:, 1:2] * order_ccid)
        ensemble = torch.cat([order, current], dim=-1)
        return self.clf(ensemble), ensemble

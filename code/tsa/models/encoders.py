"""The two encoders of a TSA model: order attention (over the history) and feature attention.

Both read one shared embedding table of `n_embedding + 2` rows: row 0 is padding/unknown,
rows 1..n_embedding-nn the categorical values, then one row per numerical feature, whose
vector is scaled by the feature's value (spec §2.1, §3.8-3.9).

Differences from legacy: none by default. Quirks kept on purpose: the dummy token is appended
*after* the current order with time 0; `emb_tbl_bias` of the order attention and the
feature attention's `layer_norm` are never used (Q11, kept for state-dict compatibility); the
feature attention's summary token is the padding row of `embedding_engineered` (Q10), so it is
looked up through the `padding_idx=0` embedding and never receives gradient.

Constructors are keyword-only; their defaults are the legacy constructors' defaults (the module
fixtures build the encoders from the legacy keyword arguments and rely on them), which are not the
config's defaults: the classifiers pass every value explicitly. `fused_attention` (fast mode)
selects the fused attention kernels and the broadcast numerical lookups.

Flags fixed at construction are `Final`; the optional bias parameters exist only when built with them.
"""

from typing import Final

import torch
from torch import Tensor, nn

from .attention import AttentionLayer, AttentionLayerPreNorm
from .blocks import FeatureAggregation
from .moe import SecondPolicy


def numerical_feature_ids(n_embedding: int, x_num: Tensor, per_position: bool) -> Tensor:
    """Table rows of the numerical features (n_embedding-nn+1 .. n_embedding) for `x_num (..., nn)`.

    `per_position` (the legacy form): one index per example, position and feature, i.e. x_num's shape. The
    forward is the same as one `(nn,)` lookup broadcast over the batch, but the table gradient is not: the
    embedding backward then sums the rows' gradients example by example (the legacy order), while the
    broadcast sums them in the multiplication's backward, in another order. That is a 1-ulp difference per
    step, which Adam amplifies into different weights; fast mode uses the broadcast (less memory).
    """
    n_num_features = x_num.shape[-1]
    ids = torch.arange(n_embedding - n_num_features + 1, n_embedding + 1, device=x_num.device)
    return ids.expand(x_num.shape) if per_position else ids


class OrderAttentionLayer(nn.Module):
    """Aggregate each order row, append a learned dummy token, run post-norm temporal attention.

    Input ids `x_cat (B, L, nc)` (float ids, as legacy), `x_num (B, L, nn)`, `time_seq (B, L, 1)`
    or None, `key_padding_mask (B, L+1)` (True = padded; last column = dummy, always False).
    Output: the dummy position `(B, E)`, or the whole `(B, L+1, E)` when `return_seq`.
    """

    use_time_seq: Final[bool]
    return_seq: Final[bool]
    fused: Final[bool]

    def __init__(
        self,
        *,
        n_cat_features: int,
        n_num_features: int,
        n_embedding: int,
        seq_len: int,
        dim_embed: int,
        dim_attn_feedforward: int,
        embedding_table: nn.Embedding,
        num_heads: int = 1,
        dropout: float = 0.1,
        n_layers_order: int = 1,
        emb_tbl_use_bias: bool = True,
        use_moe: bool = True,
        num_experts: int = 5,
        use_time_seq: bool = True,
        return_seq: bool = False,
        moe_eval_policy: SecondPolicy = "random",
        floor_aggregation_widths: bool = False,
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        self.n_embedding, self.n_num_features = n_embedding, n_num_features
        self.seq_len = seq_len  # stored, unused, as in legacy
        self.use_time_seq, self.return_seq = use_time_seq, return_seq
        self.fused = fused_attention
        # Construction order = legacy global-RNG draw order (spec §4.4).
        self.dummy_order = nn.Parameter(torch.rand(1, dim_embed))
        self.embedding = embedding_table
        self.layer_norm_feature = nn.LayerNorm(dim_embed)
        self.layer_stack = nn.ModuleList(
            AttentionLayer(dim_embed=dim_embed, dim_attn_feedforward=dim_attn_feedforward, num_heads=num_heads,
                           dropout=dropout, use_moe=use_moe, num_experts=num_experts, use_time_seq=use_time_seq,
                           moe_eval_policy=moe_eval_policy, fused=fused_attention)
            for _ in range(n_layers_order)
        )
        self.dropout = nn.Dropout(dropout)  # unused (Q11)
        self.layer_norm = nn.LayerNorm(dim_embed)
        if emb_tbl_use_bias:
            self.emb_tbl_bias = nn.Parameter(torch.randn(n_cat_features + n_num_features, dim_embed // 2))  # unused
        self.feature_aggregation_cat = FeatureAggregation(n_cat_features, floor_aggregation_widths)
        self.feature_aggregation_num = FeatureAggregation(n_num_features, floor_aggregation_widths)

    def embed_rows(self, x_cat: Tensor, x_num: Tensor) -> Tensor:
        """The front end: each order row's table rows gathered and aggregated, `(B, L, E)` (E = 2d).

        The `(B, L, nc, d)` gather is the step's largest tensor (memory-bound; `make bench` reports
        this part's share of the step)."""
        cat = self.embedding(x_cat.int())  # (B, L, nc, d); ids travel as float32 (Q17)
        cat = self.feature_aggregation_cat(cat.permute(0, 1, 3, 2)).squeeze(-1)  # (B, L, d)
        ids = numerical_feature_ids(self.n_embedding, x_num, per_position=not self.fused)
        num = self.embedding(ids) * x_num.unsqueeze(-1)  # (B, L, nn, d): each feature's row times its value
        num = self.feature_aggregation_num(num.permute(0, 1, 3, 2)).squeeze(-1)  # (B, L, d)
        return torch.cat([cat, num], dim=-1)

    def forward(
        self,
        x_cat: Tensor,
        x_num: Tensor,
        time_seq: Tensor | None,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
    ) -> Tensor:
        batch = x_cat.shape[0]
        h = self.layer_norm_feature(self.embed_rows(x_cat, x_num).permute(1, 0, 2))  # (L, B, E)
        h = torch.cat([h, self.dummy_order.unsqueeze(0).expand(1, batch, -1)], dim=0)  # (S, B, E)
        h = self.layer_norm(h)
        time: Tensor | None = None
        if self.use_time_seq:
            if time_seq is None:
                raise ValueError("OrderAttentionLayer built with use_time_seq needs time_seq")
            dummy_time = torch.zeros(batch, 1, 1, dtype=time_seq.dtype, device=time_seq.device)
            time = torch.cat([time_seq, dummy_time], dim=1).permute(1, 0, 2)  # (S, B, 1)
        for layer in self.layer_stack:
            h = layer(h, time, attn_mask, key_padding_mask)
        h = h.transpose(0, 1)  # (B, S, E)
        return h if self.return_seq else h[:, -1, :]


class FeatureAttentionLayer(nn.Module):
    """Pre-norm attention over the current order's features plus the engineered features.

    Tokens: nc categorical + nn numerical (+ bias), ne engineered (+ bias), and a summary token
    (the zero padding row of `embedding_engineered`) whose output is returned `(B, d)`.
    """

    use_bias: Final[bool]
    fused: Final[bool]
    use_engineered_bias: Final[bool]  # the parameter exists only then

    def __init__(
        self,
        *,
        n_cat_features: int,
        n_num_features: int,
        n_embedding: int,
        n_engineered_num_features: int,
        dim_embed: int,
        dim_attn_feedforward: int,
        embedding_table: nn.Embedding,
        embedding_table_engineered: nn.Embedding,
        num_heads: int = 1,
        dropout: float = 0.1,
        n_layers_feature: int = 1,
        emb_tbl_use_bias: bool = True,
        use_moe: bool = True,
        num_experts: int = 5,
        moe_eval_policy: SecondPolicy = "random",
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        dim = dim_embed // 2
        self.fused = fused_attention
        self.n_embedding, self.n_num_features = n_embedding, n_num_features
        self.n_engineered = n_engineered_num_features
        self.embedding = embedding_table
        self.layer_stack_feature = nn.ModuleList(
            AttentionLayerPreNorm(dim_embed=dim, dim_attn_feedforward=dim_attn_feedforward, num_heads=num_heads,
                                  dropout=dropout, use_moe=use_moe, num_experts=num_experts,
                                  moe_eval_policy=moe_eval_policy, fused=fused_attention)
            for _ in range(n_layers_feature)
        )
        self.dropout = nn.Dropout(dropout)  # unused (Q11)
        self.layer_norm = nn.LayerNorm(dim_embed)  # unused (Q11)
        self.use_bias = emb_tbl_use_bias
        self.use_engineered_bias = emb_tbl_use_bias and n_engineered_num_features > 0
        if emb_tbl_use_bias:
            self.emb_tbl_bias = nn.Parameter(torch.randn(n_cat_features + n_num_features, dim))
        self.embedding_engineered = embedding_table_engineered
        self.layer_norm_engineered = nn.LayerNorm(dim)
        if self.use_engineered_bias:
            self.engineered_emb_tbl_bias = nn.Parameter(torch.randn(n_engineered_num_features, dim))

    def forward(self, x_cat: Tensor, x_num: Tensor, x_engineered: Tensor | None) -> Tensor:
        batch = x_cat.shape[0]
        cat = self.embedding(x_cat[:, -1].int())  # (B, nc, d): the current order only
        current_num = x_num[:, -1]  # (B, nn)
        ids = numerical_feature_ids(self.n_embedding, current_num, per_position=not self.fused)
        num = self.embedding(ids) * current_num.unsqueeze(-1)  # (B, nn, d)
        tokens = torch.cat([cat, num], dim=1)
        if self.use_bias:
            tokens = tokens + self.emb_tbl_bias
        parts = [tokens]
        if self.n_engineered > 0:
            if x_engineered is None:
                raise ValueError(f"FeatureAttentionLayer expects {self.n_engineered} engineered features, got None")
            eng_ids = torch.arange(1, self.n_engineered + 1, device=x_cat.device)
            engineered = self.embedding_engineered(eng_ids) * x_engineered.float().unsqueeze(-1)  # (B, ne, d)
            if self.use_engineered_bias:
                engineered = engineered + self.engineered_emb_tbl_bias
            parts.append(engineered)
        summary_ids = torch.zeros(batch, 1, dtype=torch.int32, device=x_cat.device)
        parts.append(self.embedding_engineered(summary_ids))  # padding row: zero, no gradient (Q10)
        h = self.layer_norm_engineered(torch.cat(parts, dim=1).permute(1, 0, 2))  # (T, B, d)
        for layer in self.layer_stack_feature:
            h = layer(h, None, None)
        return h.transpose(0, 1)[:, -1, :]

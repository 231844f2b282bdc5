"""Attention: the temporal multi-head attention and the two transformer layer kinds.

`TemporalMultiheadAttention` is `torch.nn.MultiheadAttention` (same parameter names) with one
addition (spec §3.4): after scaling and masking, the logit of query i and key j is
*multiplied* by `exp((t_i - t_j) / 1e6)` (a per-pair inverse temperature, quirk Q12).
`AttentionLayer` is the post-norm layer of the order attention, `AttentionLayerPreNorm` the
pre-norm layer of the feature attention. Layouts are sequence-first `(S, B, E)` as in legacy.

The op order (dropout calls, tensor layouts) mirrors the legacy code so that a seed gives the
same dropout masks in training (spec §4.5). Flags fixed at construction are `Final`.
"""

import warnings
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .moe import MoE, SecondPolicy


def temporal_weights(time: Tensor) -> Tensor:
    """alpha[b, i, j] = exp((t_i - t_j) / 1e6) from `time (S, B, 1)` -> `(B, S, S)`."""
    t = time.permute(1, 0, 2)  # (B, S, 1)
    # 1e6 s (≈ 11.6 days), hard-coded in legacy.
    return torch.exp((t - t.transpose(1, 2)) / 1_000_000.0)


class TemporalMultiheadAttention(nn.Module):
    """Multi-head self-attention whose logits are scaled per pair by the time difference.

    `fused=True` (fast mode) computes the same attention with `scaled_dot_product_attention`:
    exp((t_i - t_j)/1e6) = exp(t_i/1e6) * exp(-t_j/1e6) factors into a per-query and a per-key
    scale, so scaling q and k keeps the fused kernels usable (masking before or after the scale is
    the same for -inf). Attention weights are then not returned and float attention masks (added
    before the time scale in legacy) are not supported.
    """

    fused: Final[bool]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)  # created (and drawn) before in_proj is initialised
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        time: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query = key = value `(S, B, E)`, time `(S, B, 1)` -> (output `(S, B, E)`, weights `(B, S, S)`)."""
        if not (query is key and key is value):
            raise ValueError("TemporalMultiheadAttention supports self-attention only (query is key is value)")
        if self.fused:
            return self._fused_forward(query, time, key_padding_mask, attn_mask), None
        seq, batch, embed = query.shape
        heads, head_dim = self.num_heads, embed // self.num_heads
        q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q * float(head_dim) ** -0.5
        q = q.contiguous().view(seq, batch * heads, head_dim).transpose(0, 1)  # (B·H, S, hd)
        k = k.contiguous().view(seq, batch * heads, head_dim).transpose(0, 1)
        v = v.contiguous().view(seq, batch * heads, head_dim).transpose(0, 1)

        scores = torch.bmm(q, k.transpose(1, 2))  # (B·H, S, S)
        if attn_mask is not None:
            scores = _apply_attn_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = scores.view(batch, heads, seq, seq).masked_fill(
                key_padding_mask.unsqueeze(1).unsqueeze(2), float("-inf")
            )
            scores = scores.view(batch * heads, seq, seq)
        # Quirk Q12: the time factor multiplies the scaled, masked logits (-inf stays -inf).
        scores = (scores.view(batch, heads, seq, seq) * temporal_weights(time).unsqueeze(1)).view(
            batch * heads, seq, seq
        )
        weights = F.dropout(torch.softmax(scores, dim=-1), p=self.dropout, training=self.training)
        out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(seq, batch, embed)
        out = self.out_proj(out)
        return out, weights.view(batch, heads, seq, seq).sum(dim=1) / heads

    def _fused_forward(
        self, x: Tensor, time: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None
    ) -> Tensor:
        seq, batch, embed = x.shape
        heads, head_dim = self.num_heads, embed // self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        t = time / 1_000_000.0  # (S, B, 1)
        q = q * torch.exp(t)
        k = k * torch.exp(-t)
        q = q.reshape(seq, batch, heads, head_dim).permute(1, 2, 0, 3)  # (B, H, S, hd)
        k = k.reshape(seq, batch, heads, head_dim).permute(1, 2, 0, 3)
        v = v.reshape(seq, batch, heads, head_dim).permute(1, 2, 0, 3)
        keep: Tensor | None = None  # True = attend
        if key_padding_mask is not None:
            keep = torch.logical_not(key_padding_mask).view(batch, 1, 1, seq)
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise ValueError("fused attention supports boolean attention masks only")
            allowed = torch.logical_not(attn_mask)
            keep = allowed if keep is None else keep & allowed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(seq, batch, embed))


def _apply_attn_mask(scores: Tensor, attn_mask: Tensor) -> Tensor:
    """Bool masks fill -inf, float masks are added; 2-D `(S, S)` broadcasts, 3-D is `(B·H, S, S)`."""
    if attn_mask.dtype == torch.uint8:
        warnings.warn("uint8 attn_mask is deprecated; use a bool mask", stacklevel=3)
        attn_mask = attn_mask.to(torch.bool)
    if attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(attn_mask, float("-inf"))
    return scores + attn_mask


def build_feedforward(
    *, dim: int, hidden: int, dropout: float, use_moe: bool, num_experts: int, moe_eval_policy: SecondPolicy
) -> nn.Module:
    """The layer's FFN: an MoE (legacy ReLU experts, random second policy) or Linear-ReLU-Dropout-Linear."""
    if use_moe:
        return MoE(dim, num_experts, hidden, second_policy_train="random", second_policy_eval=moe_eval_policy)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class AttentionLayer(nn.Module):
    """Post-norm layer of the order attention: x = LN1(x + attn(x)); x = LN2(x + FFN(x))."""

    use_time_seq: Final[bool]  # the attention kind this layer has
    fused: Final[bool]

    def __init__(
        self,
        *,
        dim_embed: int,
        dim_attn_feedforward: int,
        num_heads: int,
        dropout: float,
        use_moe: bool,
        num_experts: int,
        use_time_seq: bool,
        moe_eval_policy: SecondPolicy = "random",
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.use_time_seq = use_time_seq
        self.fused = fused
        self.multi_attn: nn.Module = (
            TemporalMultiheadAttention(dim_embed, num_heads, dropout=dropout, fused=fused)
            if use_time_seq
            else nn.MultiheadAttention(dim_embed, num_heads, dropout=dropout)
        )
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.layer_norm1 = nn.LayerNorm(dim_embed)
        self.layer_norm2 = nn.LayerNorm(dim_embed)
        self.feedforward = build_feedforward(
            dim=dim_embed, hidden=dim_attn_feedforward, dropout=dropout, use_moe=use_moe, num_experts=num_experts,
            moe_eval_policy=moe_eval_policy,
        )

    def forward(
        self, x: Tensor, time: Tensor | None, attn_mask: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:  # x (S, B, E)
        if self.use_time_seq:
            if time is None:
                raise ValueError("AttentionLayer built with use_time_seq needs a time tensor")
            attended = self.multi_attn(x, x, x, time, key_padding_mask=key_padding_mask, attn_mask=attn_mask)[0]
        else:
            attended = self.multi_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                       need_weights=not self.fused)[0]  # no weights: torch's fused kernel
        x = self.layer_norm1(x + self.dropout1(attended))
        return self.layer_norm2(x + self.dropout2(self.feedforward(x)))


class AttentionLayerPreNorm(nn.Module):
    """Pre-norm layer of the feature attention: x += attn(LN1(x)); x += FFN(LN2(x)); no final norm."""

    fused: Final[bool]

    def __init__(
        self,
        *,
        dim_embed: int,
        dim_attn_feedforward: int,
        num_heads: int,
        dropout: float,
        use_moe: bool,
        num_experts: int,
        moe_eval_policy: SecondPolicy = "random",
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.fused = fused
        self.multi_attn = nn.MultiheadAttention(dim_embed, num_heads, dropout=dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.layer_norm1 = nn.LayerNorm(dim_embed)
        self.layer_norm2 = nn.LayerNorm(dim_embed)
        self.feedforward = build_feedforward(
            dim=dim_embed, hidden=dim_attn_feedforward, dropout=dropout, use_moe=use_moe, num_experts=num_experts,
            moe_eval_policy=moe_eval_policy,
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        h = self.layer_norm1(x)
        attended = self.multi_attn(h, h, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                   need_weights=not self.fused)[0]
        x = x + self.dropout1(attended)
        return x + self.dropout2(self.feedforward(self.layer_norm2(x)))

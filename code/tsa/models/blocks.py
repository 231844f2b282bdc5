"""Small building blocks: feature aggregation (used) and the legacy time encoders / FM (unused).

`FeatureAggregation` mixes the *feature* axis of an embedded order row into one vector per
embedding channel. `TimeEncode`, `TimeEncoder` and `compute_fm` are defined by the legacy code
but never instantiated by its models (spec §3.1-3.2); they are kept, fixture-tested, so a
legacy checkpoint of an experiment that used them can still be read and checked.

Differences from legacy: none by default. `floor_widths=True` (fix Q9) keeps every layer at
least 1 wide, so inputs with fewer than 32 features are no longer ignored.
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import Tensor, nn

AGGREGATION_DEPTH = 5  # widths n/2, n/4, ..., n/32, then 1 (spec §3.3)


def aggregation_widths(num_feature: int, floor_widths: bool = False) -> list[int]:
    """Layer widths of `FeatureAggregation`: [n, n//2, ..., n//32, 1] (zeros when n < 32)."""
    widths = [num_feature] + [num_feature // 2**k for k in range(1, AGGREGATION_DEPTH + 1)] + [1]
    if floor_widths:
        widths = [max(w, 1) for w in widths]
    return widths


class FeatureAggregation(nn.Module):
    """MLP n -> n/2 -> ... -> n/32 -> 1 with LeakyReLU, on the last axis.

    Legacy quirk Q9: for n < 32 some widths are 0; a `Linear(0 -> 1)` outputs only its bias, so
    the block ignores its input. The zero-width layers exist (zero-size weights) so legacy state
    dicts load key for key.
    """

    def __init__(self, num_feature: int, floor_widths: bool = False) -> None:
        super().__init__()
        widths = aggregation_widths(num_feature, floor_widths)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers.append(nn.LeakyReLU())
            with warnings.catch_warnings():  # zero-width layers (n < 32) warn at init; they are intended
                warnings.filterwarnings("ignore", "Initializing zero-element tensors")
                layers.append(nn.Linear(fan_in, fan_out))
        self.encoder = nn.Sequential(*layers)  # keys encoder.{0,2,4,6,8,10}

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class TimeEncode(nn.Module):
    """Learnable time encoding: channel 0 linear, channels 1.. sine (legacy, unused by the models).

    The legacy code has two copies that differ only in the bias name: `emb_tbl_bias`
    (basic_blocks) and `bias` (the attention module's copy); `bias_name` picks one.
    """

    def __init__(self, time_dim: int, bias_name: str = "emb_tbl_bias") -> None:
        super().__init__()
        self.bias_name = bias_name
        self.weight = nn.Parameter(torch.empty(time_dim, 1))
        self.register_parameter(bias_name, nn.Parameter(torch.empty(time_dim)))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(getattr(self, bias_name), -1.0, 1.0)

    def forward(self, tt: Tensor) -> Tensor:  # tt (B, L, 1) -> (L, B, time_dim)
        z = tt.unsqueeze(-1) @ self.weight.t() + getattr(self, self.bias_name)  # (B, L, 1, D)
        z = torch.cat([z[..., :1], torch.sin(z[..., 1:])], dim=-1)
        return z.squeeze(2).permute(1, 0, 2)


class TimeEncoder(nn.Module):
    """`TimeEncode` built from two `nn.Linear`s (legacy, unused by the models)."""

    def __init__(self, time_dim: int) -> None:
        super().__init__()
        self.periodic = nn.Linear(1, time_dim - 1)
        self.linear = nn.Linear(1, 1)

    def forward(self, tt: Tensor) -> Tensor:  # tt (B, L, 1) -> (L, B, time_dim)
        z = torch.cat([self.linear(tt), torch.sin(self.periodic(tt))], dim=-1)
        return z.permute(1, 0, 2)


def compute_fm(embeddings: Tensor) -> Tensor:
    """Second-order factorization-machine interaction over the feature axis (legacy, unused).

    (..., F, E) -> (..., E): 0.5 * ((sum_F e)^2 - sum_F e^2).
    """
    summed = embeddings.sum(dim=-2)
    return 0.5 * (summed * summed - (embeddings * embeddings).sum(dim=-2))

"""Capacity-based top-2 mixture of experts, as the legacy `mixture_of_experts.py` computes it.

Shape letters as in the models: input `(S, B, E)`, sequence-first as the attention layers hand
it; K experts, C slots per expert. The B examples of the mini-batch at one position share the
experts' capacity (the legacy's routing group, quirk Q3): capacity and the cumulative slot
positions depend on the other samples and their order. This is reproduced on purpose; see spec
§3.5 (which writes the input as `(b, n, dim)` with b = S, n = B).

Differences from legacy (all default off, legacy-exact by default):
- Q4: the "random" second-expert policy draws uniforms in eval too, consuming the global RNG.
  `deterministic_eval=True` switches eval to the (repaired, Q5) "threshold" policy.
- Q5: the legacy "threshold" policy crashed (missing unsqueeze); here it works.
- Q6: the balancing loss is computed and discarded, as in the legacy `MoE`.

The capacity follows the batch at run time. The constants (minimum capacity 4, gate epsilon 1e-9)
are literals in the code.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SecondPolicy = Literal["all", "none", "threshold", "random"]


def _exclusive_cumsum(t: Tensor, dim: int) -> Tensor:
    """Count of earlier entries along `dim` (exact: the inputs are small integers)."""
    return torch.cumsum(t, dim=dim) - t


def _safe_one_hot(indexes: Tensor, max_length: int) -> Tensor:
    """one_hot(indexes) truncated to `max_length` columns (indexes >= max_length -> all zero).

    The legacy one-hot of width max(indexes) + 1 then truncated, written as a comparison with the
    columns: the same integers, with no host read of the largest index (fast mode compiles whole).
    """
    columns = torch.arange(max_length, dtype=indexes.dtype, device=indexes.device)
    return (indexes.unsqueeze(-1) == columns).long()


def _top1(x: Tensor) -> tuple[Tensor, Tensor]:
    """Largest value and its index along the last axis, that axis dropped."""
    values, indexes = x.topk(k=1, dim=-1)
    return values.squeeze(-1), indexes.squeeze(-1)


def expert_capacity(group_size: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: max(min(B, int(B*cf/K)), 4), in Python float arithmetic as legacy."""
    return max(min(group_size, int((group_size * capacity_factor) / num_experts)), 4)


class Experts(nn.Module):
    """K bias-free two-layer FFNs: act(x @ w1[e]) @ w2[e]. Init U(+-1/sqrt(last dim)), w1 then w2."""

    def __init__(self, dim: int, num_experts: int, hidden_dim: int, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(num_experts, dim, hidden_dim))
        self.w2 = nn.Parameter(torch.zeros(num_experts, hidden_dim, dim))
        for weight in (self.w1, self.w2):
            bound = 1 / math.sqrt(weight.shape[-1])
            nn.init.uniform_(weight, -bound, bound)
        self.act = activation()

    def forward(self, x: Tensor) -> Tensor:  # (K, S·C, E) -> (K, S·C, E)
        hidden = self.act(torch.einsum("...nd,...dh->...nh", x, self.w1))
        return torch.einsum("...nh,...hd->...nd", hidden, self.w2)


class Top2Gating(nn.Module):
    """GShard-style top-2 router with per-expert capacity; returns (dispatch, combine, balance loss)."""

    def __init__(
        self,
        dim: int,
        num_gates: int,
        second_policy_train: SecondPolicy = "random",
        second_policy_eval: SecondPolicy = "random",
        second_threshold_train: float = 0.2,
        second_threshold_eval: float = 0.2,
        capacity_factor_train: float = 1.25,
        capacity_factor_eval: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_gates = num_gates
        self.w_gating = nn.Parameter(torch.randn(dim, num_gates))
        self.second_policy = {"train": second_policy_train, "eval": second_policy_eval}
        self.second_threshold = {"train": second_threshold_train, "eval": second_threshold_eval}
        self.capacity_factor = {"train": capacity_factor_train, "eval": capacity_factor_eval}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # x (S, B, E)
        stage = "train" if self.training else "eval"
        group_size, k = x.shape[-2], self.num_gates
        raw_gates = torch.einsum("...bnd,...de->...bne", x, self.w_gating).softmax(dim=-1)  # (S, B, K)

        gate_1, index_1 = _top1(raw_gates)
        mask_1 = F.one_hot(index_1, k).float()
        density_1 = mask_1.mean(dim=-2)
        gate_2, index_2 = _top1(raw_gates * (1.0 - mask_1))
        mask_2 = F.one_hot(index_2, k).float()

        denom = gate_1 + gate_2 + 1e-9
        gate_1 = gate_1 / denom
        gate_2 = gate_2 / denom
        loss = (raw_gates.mean(dim=-2) * density_1).mean() * float(k**2)

        mask_2 = mask_2 * self._second_expert_keep(gate_2, stage).unsqueeze(-1)

        capacity = expert_capacity(group_size, k, self.capacity_factor[stage])
        position_1 = _exclusive_cumsum(mask_1, dim=-2) * mask_1
        mask_1 = mask_1 * (position_1 < capacity).float()
        count_1 = mask_1.sum(dim=-2, keepdim=True)
        keep_1 = mask_1.sum(dim=-1)
        slot_1 = position_1.sum(dim=-1)
        gate_1 = gate_1 * keep_1

        position_2 = (_exclusive_cumsum(mask_2, dim=-2) + count_1) * mask_2
        mask_2 = mask_2 * (position_2 < capacity).float()
        keep_2 = mask_2.sum(dim=-1)
        slot_2 = position_2.sum(dim=-1)
        gate_2 = gate_2 * keep_2

        combine = (
            gate_1[..., None, None] * keep_1[..., None, None] * F.one_hot(index_1, k)[..., None]
            * _safe_one_hot(slot_1.long(), capacity)[..., None, :]
            + gate_2[..., None, None] * keep_2[..., None, None] * F.one_hot(index_2, k)[..., None]
            * _safe_one_hot(slot_2.long(), capacity)[..., None, :]
        )  # (S, B, K, C)
        dispatch = combine.to(torch.bool).to(combine)
        return dispatch, combine, loss

    def _second_expert_keep(self, gate_2: Tensor, stage: str) -> Tensor:
        """1.0 where the second choice is kept, per token (the policy of this stage)."""
        policy, threshold = self.second_policy[stage], self.second_threshold[stage]
        if policy == "all":
            return torch.ones_like(gate_2)
        if policy == "none":
            return torch.zeros_like(gate_2)
        if policy == "threshold":
            return (gate_2 > threshold).float()
        # "random": u < g2 / threshold; the draw (same stream as torch.rand(S, B)) also happens in eval (Q4).
        probs = torch.zeros_like(gate_2).uniform_(0.0, 1.0)
        return (probs < (gate_2 / max(threshold, 1e-9))).float()


class MoE(nn.Module):
    """Top-2 MoE layer: route, run the experts on their slots, combine. Returns only the output."""

    def __init__(
        self,
        dim: int,
        num_experts: int,
        hidden_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        second_policy_train: SecondPolicy = "random",
        second_policy_eval: SecondPolicy = "random",
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate = Top2Gating(dim, num_experts, second_policy_train, second_policy_eval)
        self.experts = Experts(dim, num_experts, hidden_dim, activation)

    def forward(self, inputs: Tensor) -> Tensor:  # (S, B, E)
        dim = inputs.shape[-1]
        dispatch, combine, _ = self.gate(inputs)  # balance loss discarded as in legacy (Q6)
        expert_inputs = torch.einsum("bnd,bnec->ebcd", inputs, dispatch)  # (K, S, C, E)
        shape = expert_inputs.shape
        expert_outputs = self.experts(expert_inputs.reshape(self.num_experts, -1, dim)).reshape(shape)
        # With K = 1 this einsum returns a non-contiguous tensor; the dropout after it depends on
        # that layout for RNG-exact training (quirk Q8), so it is kept as is.
        return torch.einsum("ebcd,bnec->bnd", expert_outputs, combine)

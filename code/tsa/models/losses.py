"""Every loss the legacy code defines (spec §5), and the legacy `set_loss` selection.

Selectable by the legacy job: CrossEntropyLoss (reduction "sum"), FocalLoss, and two that
crashed (quirk Q18): BCEWithLogitsLoss (class-index targets against `(B, C)` logits) and
Cyclical_FocalLoss (validation called it without the epoch). `select_loss` reproduces that
selection exactly; `fix_loss_selection` makes the two crashing ones work (one-hot targets,
epoch in validation) and `fix_loss_reduction` replaces the hard-coded "sum".

Defined but not selectable in legacy, kept for parity (fixture-tested): the ASL family and the
binary focal loss. Difference from legacy: AsymmetricLoss no longer switches autograd back on
globally after each call (Q30); it uses a local `no_grad` block, which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from tsa.config import TrainConfig

FOCAL_ONE_HOT_EPS = 1e-6  # added to every one-hot entry by the legacy focal loss (Q31)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise NotImplementedError(f"Invalid reduction mode: {reduction}")


def focal_loss(input: Tensor, target: Tensor, alpha: float, gamma: float = 2.0, reduction: str = "none") -> Tensor:
    """Multi-class focal loss on logits `(B, C, ...)` and int64 class targets `(B, ...)`.

    Quirk Q31: `alpha` is a plain multiplier and every one-hot entry gets +1e-6, so non-target
    classes leak a tiny weight.
    """
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64 class indices, got {target.dtype}")
    probs = F.softmax(input, dim=1)
    log_probs = F.log_softmax(input, dim=1)
    one_hot = F.one_hot(target, input.shape[1]).movedim(-1, 1).to(input.dtype) + FOCAL_ONE_HOT_EPS
    focal = -alpha * torch.pow(1.0 - probs, gamma) * log_probs
    return _reduce((one_hot * focal).sum(dim=1), reduction)


class FocalLoss(nn.Module):
    def __init__(self, alpha: float, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(input, target, self.alpha, self.gamma, self.reduction)


def binary_focal_loss_with_logits(
    input: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Element-wise binary focal loss on logits; `target` has the logits' shape (>= 2-D)."""
    if input.dim() < 2:
        raise ValueError(f"input must be at least 2-D, got shape {tuple(input.shape)}")
    loss = (
        -alpha * torch.sigmoid(-input).pow(gamma) * target * F.logsigmoid(input)
        - (1 - alpha) * torch.sigmoid(input).pow(gamma) * (1.0 - target) * F.logsigmoid(-input)
    )
    return _reduce(loss, reduction)


class BinaryFocalLossWithLogits(nn.Module):
    def __init__(self, alpha: float, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_focal_loss_with_logits(input, target, self.alpha, self.gamma, self.reduction)


class AsymmetricLoss(nn.Module):
    """Multi-label ASL on logits and multi-hot targets of the same shape; always summed."""

    def __init__(
        self,
        gamma_neg: float = 4,
        gamma_pos: float = 1,
        clip: float = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = True,
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        xs_pos = torch.sigmoid(x)
        xs_neg = 1 - xs_pos
        if self.clip is not None and self.clip > 0:
            xs_neg = (xs_neg + self.clip).clamp(max=1)
        loss = y * torch.log(xs_pos.clamp(min=self.eps)) + (1 - y) * torch.log(xs_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.disable_torch_grad_focal_loss):
                pt = xs_pos * y + xs_neg * (1 - y)
                weight = torch.pow(1 - pt, self.gamma_pos * y + self.gamma_neg * (1 - y))
            loss = loss * weight
        return -loss.sum()


class AsymmetricLossOptimized(AsymmetricLoss):
    """Same values as `AsymmetricLoss`; by default the gradient also flows through the weight."""

    def __init__(
        self,
        gamma_neg: float = 4,
        gamma_pos: float = 1,
        clip: float = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = False,
    ) -> None:
        super().__init__(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss)


def _single_label_targets(inputs: Tensor, target: Tensor, argmax_2d: bool) -> Tensor:
    if argmax_2d and target.dim() == 2:
        target = target.argmax(dim=1)
    return torch.zeros_like(inputs).scatter_(1, target.long().unsqueeze(1), 1)


def _asl_single_label(
    inputs: Tensor, targets: Tensor, gamma_pos: float, gamma_neg: float, eps: float, extra_weight: Tensor | None = None,
    eta: float = 0.0,
) -> Tensor:
    """Per-sample loss of the single-label ASL family (weights keep their gradient)."""
    num_classes = inputs.shape[-1]
    log_preds = torch.log_softmax(inputs, dim=-1)
    anti_targets = 1 - targets
    xs_pos = torch.exp(log_preds) * targets
    xs_neg = (1 - torch.exp(log_preds)) * anti_targets
    weight = torch.pow(1 - xs_pos - xs_neg, gamma_pos * targets + gamma_neg * anti_targets)
    if extra_weight is not None:
        weight = (1 - eta) * weight + eta * extra_weight
    log_preds = log_preds * weight
    if eps > 0:
        targets = targets.mul(1 - eps).add(eps / num_classes)
    return -targets.mul(log_preds).sum(dim=-1)


class ASLSingleLabel(nn.Module):
    """Single-label ASL with label smoothing; reduction "mean" averages, anything else sums."""

    def __init__(self, gamma_pos: float = 0, gamma_neg: float = 4, eps: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.eps, self.reduction = gamma_pos, gamma_neg, eps, reduction

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        targets = _single_label_targets(inputs, target, argmax_2d=True)
        loss = _asl_single_label(inputs, targets, self.gamma_pos, self.gamma_neg, self.eps)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class ASLFocalLoss(nn.Module):
    """ASL with gamma_pos = gamma_neg = gamma; reduction "mean" averages, anything else is per sample."""

    def __init__(self, gamma: float = 2, eps: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma, self.eps, self.reduction = gamma, eps, reduction

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        targets = _single_label_targets(inputs, target, argmax_2d=False)
        loss = _asl_single_label(inputs, targets, self.gamma, self.gamma, self.eps)
        return loss.mean() if self.reduction == "mean" else loss


def cyclical_eta(epoch: int, epochs: int, factor: float) -> float:
    """Share of the "hard-class" weight at `epoch` (1 at epoch 0, cycling with `factor`)."""
    if factor * epoch < epochs:
        return 1 - factor * epoch / (epochs - 1)
    if factor == 1.0:
        return 0.0
    return (factor * epoch / (epochs - 1) - 1.0) / (factor - 1.0)


class CyclicalFocalLoss(nn.Module):
    """Legacy `Cyclical_FocalLoss`: ASL blended with (1 + p_t)^gamma_hc by an epoch schedule.

    `forward` needs the epoch: calling it without one raises TypeError, as the legacy validation
    did (Q18).
    """

    def __init__(
        self,
        gamma_pos: float = 0,
        gamma_neg: float = 4,
        gamma_hc: float = 0,
        eps: float = 0.1,
        reduction: str = "mean",
        epochs: int = 200,
        factor: float = 2,
    ) -> None:
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.gamma_hc, self.eps = gamma_pos, gamma_neg, gamma_hc, eps
        self.reduction, self.epochs, self.factor = reduction, epochs, factor

    def forward(self, inputs: Tensor, target: Tensor, epoch: int) -> Tensor:
        eta = cyclical_eta(epoch, self.epochs, self.factor)
        targets = _single_label_targets(inputs, target, argmax_2d=True)
        positive_w = torch.pow(1 + torch.exp(torch.log_softmax(inputs, dim=-1)) * targets, self.gamma_hc * targets)
        loss = _asl_single_label(inputs, targets, self.gamma_pos, self.gamma_neg, self.eps, positive_w, eta)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


@dataclass
class TrainingLoss:
    """The selected criterion and how the training loop calls it."""

    criterion: nn.Module
    takes_epoch: bool = False
    one_hot_targets: bool = False
    epoch_in_validation: bool = False

    def __call__(self, scores: Tensor, y: Tensor, epoch: int, training: bool) -> Tensor:
        target = F.one_hot(y, scores.shape[-1]).to(scores.dtype) if self.one_hot_targets else y
        if self.takes_epoch and (training or self.epoch_in_validation):
            return self.criterion(scores, target, epoch)
        return self.criterion(scores, target)


def select_loss(cfg: TrainConfig) -> TrainingLoss:
    """Legacy `set_loss(args)`, with the opt-in Q18 fixes of `cfg`."""
    fixed = cfg.fix_loss_selection
    reduction = cfg.loss_reduction if cfg.fix_loss_reduction else "sum"
    if cfg.loss == "CrossEntropyLoss":
        return TrainingLoss(nn.CrossEntropyLoss(reduction=reduction))
    if cfg.loss == "FocalLoss":
        return TrainingLoss(FocalLoss(gamma=cfg.loss_gamma, alpha=cfg.loss_alpha, reduction=cfg.loss_reduction))
    if cfg.loss == "BCEWithLogitsLoss":
        return TrainingLoss(nn.BCEWithLogitsLoss(reduction=reduction), one_hot_targets=fixed)
    criterion = CyclicalFocalLoss(gamma_pos=cfg.gamma_pos, gamma_neg=cfg.gamma_neg, gamma_hc=cfg.gamma_hc,
                                  epochs=cfg.max_epoch, factor=cfg.cyclical_factor, reduction=reduction)
    return TrainingLoss(criterion, takes_epoch=True, epoch_in_validation=fixed)

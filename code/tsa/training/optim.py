"""Optimizer and schedule, built exactly as the legacy `create_optimizer` did (spec §6, Q19).

Adam(lr, betas=(beta1, beta2), weight_decay) wrapped at once by
OneCycleLR(max_lr=scheduler_maxlr, total_steps=max_epoch) with torch defaults. The scheduler
overwrites the lr with max_lr/25 and beta1 with 0.95 on construction, so `lr` and `beta1` have
no effect (Q19); it is stepped once per epoch, after training and before validation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import OneCycleLR

from tsa.config import TrainConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig
) -> tuple[torch.optim.Adam, OneCycleLR]:
    """Adam then OneCycleLR, as the legacy job built them."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    scheduler = OneCycleLR(optimizer, max_lr=cfg.scheduler_maxlr, total_steps=cfg.max_epoch)
    return optimizer, scheduler

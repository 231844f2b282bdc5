"""What training produces: one record per epoch, and the scored result of a whole fit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from tsa.training.evaluation import ChannelScores
from tsa.training.selection import EarlyStop


@dataclass(frozen=True)
class EpochResult:
    """One epoch as the job logs it (rank 0's losses, the gathered AUC)."""

    epoch: int
    train_loss: float
    validation_loss: float
    validation_auc: float
    learning_rate: float


@dataclass(frozen=True)
class TrainingResult:
    """A finished fit: the selected model, its history and selection, and its scores per channel."""

    model: nn.Module  # the best weights (the last ones when no epoch improved)
    history: list[EpochResult]
    best_epoch: int | None
    best_auc: float
    early_stop: EarlyStop
    scores: dict[str, ChannelScores]  # validation, calibration, test: the post-training pass
    ids: dict[str, np.ndarray | None]  # per channel, the example ids of `scores[...].by_row` (None: row numbers)
    is_global_zero: bool  # this process writes the artifacts

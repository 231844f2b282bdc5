"""Plain `nn.Module`s: the TSA classifiers, their building blocks and the losses.

Models know nothing about Lightning, SageMaker or files: `build_model(cfg.model)` in a test
needs no I/O.

The package needs only torch at run time: its imports of each other are relative and the configs
are imported for typing only (a config is read by attribute). So the job ships this folder as it
is with the weights (`model/code/tsa_models/`), and the serving handler builds the model from it
and `config.json` without the tsa package (docs/serving.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .losses import TrainingLoss, select_loss
from .tsa import SingleSequenceTSA
from .tsa_dual import DualSequenceTSA

if TYPE_CHECKING:
    from tsa.config import ModelConfig

__all__ = ["DualSequenceTSA", "SingleSequenceTSA", "TrainingLoss", "build_model", "select_loss"]


def build_model(cfg: ModelConfig, *, fused_attention: bool = False) -> nn.Module:
    """The classifier `cfg.model_type` names; `fused_attention`: fast mode's kernels (the run plan decides)."""
    model_class = DualSequenceTSA if cfg.model_type == "dual" else SingleSequenceTSA
    return model_class(cfg, fused_attention=fused_attention)

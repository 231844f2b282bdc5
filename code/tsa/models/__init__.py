"""Plain `nn.Module`s: the TSA classifiers, their building blocks and the losses.

Models know nothing about Lightning, SageMaker or files: `build_model(cfg.model)` in a test
needs no I/O.
"""

from torch import nn

from tsa.config import ModelConfig
from tsa.models.losses import TrainingLoss, select_loss
from tsa.models.tsa import SingleSequenceTSA
from tsa.models.tsa_dual import DualSequenceTSA

__all__ = ["DualSequenceTSA", "SingleSequenceTSA", "TrainingLoss", "build_model", "select_loss"]


def build_model(cfg: ModelConfig, *, fused_attention: bool = False) -> nn.Module:
    """The classifier `cfg.model_type` names; `fused_attention`: fast mode's kernels (the run plan decides)."""
    model_class = DualSequenceTSA if cfg.model_type == "dual" else SingleSequenceTSA
    return model_class(cfg, fused_attention=fused_attention)

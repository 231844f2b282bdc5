"""Every legacy loss and the legacy loss selection, against the fixtures (kind `loss`).

Run: .venv/bin/pytest tests/equivalence/test_losses.py

Values rtol = atol = 1e-6; input gradients rtol 1e-5, atol 1e-6·max(1, G); a legacy error must
be the same exception type here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tests.equivalence.fixtures import cases, load
from tsa.config import TrainConfig
from tsa.models import losses

CLASSES: dict[str, type[nn.Module]] = {
    "focalloss.FocalLoss": losses.FocalLoss,
    "focalloss.BinaryFocalLossWithLogits": losses.BinaryFocalLossWithLogits,
    "asl_focal_loss.AsymmetricLoss": losses.AsymmetricLoss,
    "asl_focal_loss.AsymmetricLossOptimized": losses.AsymmetricLossOptimized,
    "asl_focal_loss.ASLSingleLabel": losses.ASLSingleLabel,
    "asl_focal_loss.Cyclical_FocalLoss": losses.CyclicalFocalLoss,
    "asl_focal_loss.ASL_FocalLoss": losses.ASLFocalLoss,
    "torch.nn.CrossEntropyLoss": nn.CrossEntropyLoss,
    "torch.nn.BCEWithLogitsLoss": nn.BCEWithLogitsLoss,
}
FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "focalloss.focal_loss": losses.focal_loss,
    "focalloss.binary_focal_loss_with_logits": losses.binary_focal_loss_with_logits,
}
RESOLVED = {
    "torch.nn.modules.loss.CrossEntropyLoss": nn.CrossEntropyLoss,
    "torch.nn.modules.loss.BCEWithLogitsLoss": nn.BCEWithLogitsLoss,
    "focalloss.FocalLoss": losses.FocalLoss,
    "asl_focal_loss.Cyclical_FocalLoss": losses.CyclicalFocalLoss,
}


def build_loss(fx: dict[str, Any]) -> Callable[..., Tensor]:
    target, kwargs = fx["target"], fx["ctor_kwargs"]
    if target == "utilities.set_loss":
        fields = {key: value for key, value in kwargs.items() if key in TrainConfig.model_fields}
        selected = losses.select_loss(TrainConfig(**fields))
        assert isinstance(selected.criterion, RESOLVED[fx["resolved"]])
        return selected.criterion
    if target in FUNCTIONS:
        return lambda *args: FUNCTIONS[target](*args, **kwargs)
    if target in CLASSES:
        return CLASSES[target](**kwargs)
    raise NotImplementedError(f"no loss for legacy target {target!r}")


@pytest.mark.parametrize("entry", cases("loss"))
def test_loss_value_gradient_and_errors_match_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    criterion = build_loss(fx)
    logits = fx["inputs"]["input"].clone().requires_grad_(True)
    args = [logits, fx["inputs"]["target"]]
    if "epoch" in fx["inputs"]:
        args.append(fx["inputs"]["epoch"])
    if fx["error"] is not None:
        error_type = fx["error"].split(":", 1)[0]
        with pytest.raises(Exception) as info:
            criterion(*args)
        assert type(info.value).__name__ == error_type
        return
    value = criterion(*args)
    torch.testing.assert_close(value, fx["outputs"]["loss"], rtol=1e-6, atol=1e-6)
    value.sum().backward()
    reference = fx["input_grads"]["input"]
    scale = max(1.0, reference.abs().max().item())
    torch.testing.assert_close(logits.grad, reference, rtol=1e-5, atol=1e-6 * scale)

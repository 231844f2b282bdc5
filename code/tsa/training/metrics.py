"""Validation metrics named and computed as the legacy `get_performance` (spec §6).

Scores are the raw logits `(N, 2)`; the positive-class probability is `softmax(score)[:, -1]`
(the last class, Q33); accuracy/precision/recall/F1 use `argmax(score)` with positive label 1;
`pr_auc` is the trapezoid area under the precision-recall curve, `aps` the average precision;
every value is rounded to 4 decimals. torchmetrics computes them in float64 (the legacy used
scikit-learn; the fixture pins the numbers).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
)

MEASURES = ("accuracy", "precision", "recall", "f1", "auc", "pr_auc", "aps")
DECIMALS = 4


def positive_probability(scores: Tensor) -> Tensor:
    """P(last class) from logits `(N, C)`, in float64."""
    return torch.softmax(scores.double(), dim=-1)[:, -1]


def _pr_auc(prob: Tensor, labels: Tensor) -> float:
    precision, recall, _ = binary_precision_recall_curve(prob, labels)
    return abs(torch.trapezoid(precision.double(), recall.double()).item())


def get_performance(
    scores: Tensor, labels: Tensor, measures: tuple[str, ...] | list[str] = ("auc",)
) -> dict[str, float]:
    """Every requested measure, rounded to 4 decimals."""
    labels = labels.long()
    prob = positive_probability(scores)
    predicted = scores.argmax(dim=-1)
    compute = {
        "accuracy": lambda: binary_accuracy(predicted, labels).item(),
        "precision": lambda: binary_precision(predicted, labels).item(),
        "recall": lambda: binary_recall(predicted, labels).item(),
        "f1": lambda: binary_f1_score(predicted, labels).item(),
        "auc": lambda: binary_auroc(prob, labels).item(),
        "pr_auc": lambda: _pr_auc(prob, labels),
        "aps": lambda: binary_average_precision(prob, labels).item(),
    }
    unknown = [m for m in measures if m not in compute]
    if unknown:
        raise ValueError(f"unknown measures {unknown}: allowed are {list(MEASURES)}")
    return {measure: round(float(compute[measure]()), DECIMALS) for measure in measures}

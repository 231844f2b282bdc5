"""One evaluation pass over a channel: collect per rank, gather, and the two views of the result.

Legacy (default, spec §6 and `legacy_run_fixtures.md` §5): every rank scores its own batches of
the legacy sampler order (shuffled with seed 0 + epoch, padded to a multiple of the world size,
rank r taking every world-th row); the ranks' blocks are concatenated in rank order and cut to
the channel's row count. That list is what the legacy AUC, score files and percentile map were
computed from, and with MoE the scores themselves depend on which rows share a batch, so the
order is numeric (Q24). The logged loss is rank 0's own mean of per-batch `loss / len(batch)`.

`fix_evaluation_order` (Q24 fix): rows in order, no padding, every row exactly once; the logged
loss is the mean over every rank's batches.

Either way `by_row` holds each example once, in row order (the prediction files): with three or
more ranks the legacy cut can drop rows, the full gathered list has them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tsa.training.world import is_distributed


@dataclass(frozen=True)
class Predictions:
    """Scores of examples `rows` (N,), logits `scores` (N, C) float32, labels (N,) int64."""

    rows: Tensor
    scores: Tensor
    labels: Tensor

    def take(self, index: Tensor | slice) -> Predictions:
        return Predictions(self.rows[index], self.scores[index], self.labels[index])

    def in_row_order(self) -> Predictions:
        """Each example once (its first occurrence), sorted by row."""
        order = torch.argsort(self.rows, stable=True)
        rows = self.rows[order]
        first = torch.ones_like(rows, dtype=torch.bool)
        first[1:] = rows[1:] != rows[:-1]
        return self.take(order[first])


@dataclass(frozen=True)
class ChannelScores:
    """A gathered evaluation pass: what the metrics and legacy files use, and the row-order view."""

    evaluated: Predictions  # legacy: rank blocks cut to N; fixed: row order
    by_row: Predictions
    logged_loss: float  # the mean per-batch loss the job logs (see the module docstring)


class EvaluationPass:
    """This rank's predictions of one pass, in the order it scored them."""

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.batch_losses: list[Tensor] = []

    def add(self, rows: Tensor, scores: Tensor, labels: Tensor, loss: Tensor) -> None:
        """One batch; `loss` is the criterion's output (legacy logs `loss.item() / len(batch)`)."""
        self.rows.append(rows.detach())
        self.scores.append(scores.detach().float())
        self.labels.append(labels.detach())
        self.batch_losses.append(loss.detach().double() / len(labels))

    def _local(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        def cat(parts: list[Tensor], empty: Tensor) -> Tensor:
            return torch.cat(parts).cpu() if parts else empty

        return (cat(self.rows, torch.zeros(0, dtype=torch.long)), cat(self.scores, torch.zeros(0, 2)),
                cat(self.labels, torch.zeros(0, dtype=torch.long)),
                torch.stack(self.batch_losses).cpu() if self.batch_losses else torch.zeros(0, dtype=torch.float64))

    def gather(self, legacy_order: bool) -> ChannelScores:
        """Every rank's predictions (a collective under DDP: all ranks call it).

        The legacy cut keeps the first N gathered entries, N the channel's row count, which is the
        number of distinct gathered rows (padding only repeats rows).
        """
        local = self._local()
        parts: list[Any] = [local]
        if is_distributed():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        gathered = Predictions(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                               torch.cat([p[2] for p in parts]))
        by_row = gathered.in_row_order()
        if legacy_order:
            evaluated = gathered.take(slice(0, len(by_row.rows)))
            losses = local[3]  # this rank's own batches (rank 0's is the logged one)
        else:
            evaluated = by_row
            losses = torch.cat([p[3] for p in parts])
        logged = float(losses.mean()) if losses.numel() else float("nan")
        return ChannelScores(evaluated=evaluated, by_row=by_row, logged_loss=logged)

"""The Lightning system: one TSA model trained with the legacy recipe (spec §6).

`TsaSystem(model, config)` takes a plain model (Lightning's model/system split). One step body
(`_common_step`) serves training, validation and prediction: batch -> the legacy forward
arguments -> `(scores, ensemble)` -> the selected legacy loss. Optimizer and schedule are the
legacy Adam + OneCycleLR stepped once per epoch (Q19). Validation predictions of every rank are
gathered with their row numbers, so metrics are computed on each example exactly once and equal
the single-process metrics; every rank computes the same numbers (no broadcast needed).

Logged loss values follow the legacy: per batch `loss / batch size`, averaged over batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

from tsa.config import JobConfig
from tsa.data.batches import Batch, model_inputs
from tsa.models import select_loss
from tsa.training.metrics import get_performance
from tsa.training.optim import build_optimizer


@dataclass
class Predictions:
    """Scores of one channel in row order: each example once."""

    rows: Tensor  # (N,) int64
    scores: Tensor  # (N, C) float32 logits
    labels: Tensor  # (N,) int64
    mean_batch_loss: float = float("nan")


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_auc: float
    learning_rate: float
    extra: dict[str, float] = field(default_factory=dict)


def gather_predictions(rows: list[Tensor], scores: list[Tensor], labels: list[Tensor],
                       losses: list[Tensor], distributed: bool = True) -> Predictions:
    """Concatenate this rank's predictions, gather every rank's, sort by row, drop duplicates."""
    local = [torch.cat(rows).cpu() if rows else torch.zeros(0, dtype=torch.long),
             torch.cat(scores).float().cpu() if scores else torch.zeros(0, 2),
             torch.cat(labels).cpu() if labels else torch.zeros(0, dtype=torch.long),
             torch.stack(losses).double().cpu() if losses else torch.zeros(0, dtype=torch.float64)]
    if distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    all_rows = torch.cat([p[0] for p in parts])
    order = torch.argsort(all_rows, stable=True)
    sorted_rows = all_rows[order]
    keep = torch.ones_like(sorted_rows, dtype=torch.bool)
    keep[1:] = sorted_rows[1:] != sorted_rows[:-1]
    batch_losses = torch.cat([p[3] for p in parts])
    return Predictions(
        rows=sorted_rows[keep],
        scores=torch.cat([p[1] for p in parts])[order][keep],
        labels=torch.cat([p[2] for p in parts])[order][keep],
        mean_batch_loss=float(batch_losses.mean()) if batch_losses.numel() else float("nan"),
    )


class TsaSystem(L.LightningModule):
    """Training, validation and prediction of one TSA model."""

    def __init__(self, model: nn.Module, config: JobConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        # Fast mode on GPU: a compiled forward of the same module. A plain callable, not a submodule,
        # so checkpoints and exported weights keep the model's keys.
        compile_model = config.runtime.fast_mode and torch.cuda.is_available() and config.runtime.accelerator != "cpu"
        self._forward: Callable[..., tuple[Tensor, Tensor]] = (
            torch.compile(model.forward) if compile_model else model.__call__
        )
        self.loss_fn = select_loss(config.train)
        self.history: list[EpochResult] = []
        self._reset_validation()
        self._train_loss_sum = torch.zeros((), dtype=torch.float64)
        self._train_batches = 0
        self._epoch_lr = float("nan")

    def _reset_validation(self) -> None:
        self._val_rows: list[Tensor] = []
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        self._val_losses: list[Tensor] = []

    def _common_step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        inputs, y = model_inputs(batch, self.config.model)
        scores, _ = self._forward(**inputs)
        loss = self.loss_fn(scores, y, epoch=self.current_epoch, training=stage == "train")
        return scores, y, loss

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._train_batches = 0
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, y, loss = self._common_step(batch, "train")
        self._train_loss_sum += loss.detach().double() / len(y)  # stays on the device: no host sync
        self._train_batches += 1
        self.last_step_loss = loss.detach()
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        scores, y, loss = self._common_step(batch, "validation")
        self._val_rows.append(batch["row"])
        self._val_scores.append(scores.detach())
        self._val_labels.append(y)
        self._val_losses.append(loss.detach() / len(y))

    def on_validation_epoch_end(self) -> None:
        predictions = gather_predictions(self._val_rows, self._val_scores, self._val_labels, self._val_losses)
        self._reset_validation()
        if self.trainer.sanity_checking:
            return
        auc = get_performance(predictions.scores, predictions.labels, ["auc"])["auc"]
        self.history.append(EpochResult(
            epoch=self.current_epoch, train_loss=self._mean_train_loss(), validation_loss=predictions.mean_batch_loss,
            validation_auc=auc, learning_rate=self._epoch_lr,
        ))

    def _mean_train_loss(self) -> float:
        total = self._train_loss_sum.detach().clone()
        count = torch.tensor(float(self._train_batches), dtype=torch.float64, device=total.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        return float(total / count) if count > 0 else float("nan")

    @torch.no_grad()
    def predict_channel(self, loader: Iterable[Batch]) -> Predictions:
        """This process alone scores every batch of `loader` (no collectives), in eval mode."""
        self.eval()
        rows, scores, labels, losses = [], [], [], []
        with self.trainer.precision_plugin.forward_context():
            for batch in loader:
                batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
                batch_scores, y, loss = self._common_step(batch, "predict")
                rows.append(batch["row"])
                scores.append(batch_scores.float())
                labels.append(y)
                losses.append(loss.float() / len(y))
        return gather_predictions(rows, scores, labels, losses, distributed=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(self.model.parameters(), self.config.train)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tsa_config"] = self.config.resolved()
        checkpoint["tsa_history"] = [vars(result) for result in self.history]
        checkpoint["tsa_epoch_progress"] = {"train_loss_sum": self._train_loss_sum.detach().cpu(),
                                            "train_batches": self._train_batches, "epoch_lr": self._epoch_lr}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [EpochResult(**result) for result in checkpoint.get("tsa_history", [])]
        progress = checkpoint.get("tsa_epoch_progress")
        if progress is not None:
            self._train_loss_sum = progress["train_loss_sum"].to(self.device)
            self._train_batches = progress["train_batches"]
            self._epoch_lr = progress["epoch_lr"]

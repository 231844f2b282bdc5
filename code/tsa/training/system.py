"""The Lightning system: one TSA model trained with the legacy recipe (spec §6).

`TsaSystem(model, config, plan, best_weights)` takes a plain model (Lightning's model/system
split). One step body (`_common_step`) serves training, validation and scoring: batch -> the
legacy forward arguments -> `(scores, ensemble)` -> the selected legacy loss. Optimizer and
schedule are the legacy Adam + OneCycleLR stepped once per epoch (Q19). Validation predictions of
every rank are gathered as the legacy gathered them (`evaluation.py`); every rank computes the same
metrics from them (no broadcast needed). Model selection (`selection.py`) runs right after each
validation: it writes the best weights (rank 0) and stops training on patience. The system drives
the data module's position (epoch start, batches trained, epoch complete), which the data module
keeps in checkpoints.

Logged loss values follow the legacy: per batch `loss.item() / len(batch)` in float64, averaged over
this rank's batches (rank 0's are the logged ones).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from tsa.config import JobConfig
from tsa.data import TsaDataModule
from tsa.data.batches import Batch, model_inputs
from tsa.errors import DataError, OutputError
from tsa.models import select_loss
from tsa.training.evaluation import ChannelScores, EvaluationPass
from tsa.training.metrics import get_performance
from tsa.training.optim import build_optimizer
from tsa.training.plan import RunPlan
from tsa.training.result import EpochResult
from tsa.training.selection import ModelSelection
from tsa.training.trace import RunTrace, weight_digests
from tsa.weights import project_state_dict, write_safetensors

log = logging.getLogger("tsa.training")


class TsaSystem(L.LightningModule):
    """Training, validation, model selection and scoring of one TSA model."""

    def __init__(self, model: nn.Module, config: JobConfig, plan: RunPlan, best_weights: Path,
                 trace: RunTrace | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.best_weights = best_weights  # the selected model's weights, written when the best model changes
        self.selection = ModelSelection(patience=config.train.patience, max_epoch=config.train.max_epoch)
        self.trace = trace or RunTrace(None)
        # A compiled forward of the same module (the plan decides: fast mode on GPU). A plain callable,
        # not a submodule, so checkpoints and exported weights keep the model's keys.
        self._forward: Callable[..., tuple[Tensor, Tensor]] = (
            torch.compile(model.forward) if plan.compile_model else model.__call__
        )
        self.loss_fn = select_loss(config.train)
        self.history: list[EpochResult] = []
        self._validation = EvaluationPass()
        self._train_loss_sum = torch.zeros((), dtype=torch.float64)
        self._train_batches = 0
        self._epoch_lr = float("nan")
        # The checkpoint callback's safe point inside each validation step (see `SpotCheckpoint`).
        self.validation_stop_point: Callable[[], None] = lambda: None
        # Runs right before each validation's data iterator is made (which draws from the global RNG).
        self.before_validation: Callable[[], None] = lambda: None

    def setup(self, stage: str) -> None:
        self.trace.bind(self.global_rank)

    @property
    def data(self) -> TsaDataModule:
        datamodule = self.trainer.datamodule
        assert isinstance(datamodule, TsaDataModule), "TsaSystem trains from a TsaDataModule"
        return datamodule

    def _common_step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        inputs, y = model_inputs(batch, self.config.model)
        self.trace.before_forward()
        scores, _ = self._forward(**inputs)
        loss = self.loss_fn(scores, y, epoch=self.current_epoch, training=stage == "train")
        return scores, y, loss

    def on_train_start(self) -> None:
        if self.selection.should_stop:  # resumed after the stop decision (e.g. died while exporting)
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        if self.data.start_epoch(self.current_epoch):  # not the resumed middle of an epoch
            self._train_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            self._train_batches = 0
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, y, loss = self._common_step(batch, "train")
        # As the legacy logged it: loss.item() / len(batch), in float64; kept on the device (no host sync).
        self._train_loss_sum += loss.detach().double() / len(y)
        self._train_batches += 1
        self.last_step_loss = loss.detach()
        # Counted here, not in on_train_batch_end: callbacks (the checkpoint) run before the module's hook.
        self.data.batch_trained()
        if self.trace.enabled:
            self.trace.extend("train_rows", batch["row"].tolist())
            self.trace.extend("train_step_losses", [loss.item() / len(y)])
        return loss

    def on_validation_epoch_start(self) -> None:
        if self.trace.enabled and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.trace.set(weights_sha1=weight_digests(self.model))

    def on_validation_model_zero_grad(self) -> None:
        super().on_validation_model_zero_grad()
        if not self.trainer.sanity_checking:
            self.before_validation()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Inside the step, not in on_validation_batch_start: a checkpoint taken here is one Lightning
        # resumes as "restarted mid-evaluation", running the whole validation again.
        self.validation_stop_point()
        scores, y, loss = self._common_step(batch, "validation")
        self._validation.add(batch["row"], scores, y, loss)
        self.trace.extend("validation_rows", batch["row"].tolist())

    def on_validation_epoch_end(self) -> None:
        scores = self._validation.gather(legacy_order=self.data.legacy_evaluation("validation"))
        self._validation = EvaluationPass()
        if self.trainer.sanity_checking:
            return
        self._refuse_non_finite(scores)
        auc = get_performance(scores.evaluated.scores, scores.evaluated.labels, ["auc"])["auc"]
        result = EpochResult(epoch=self.current_epoch, train_loss=self._mean_train_loss(),
                             validation_loss=scores.logged_loss, validation_auc=auc, learning_rate=self._epoch_lr)
        self.history.append(result)
        self.trace.set(epoch=result.epoch, lr=result.learning_rate, validation_auc=auc,
                       validation_loss_logged=result.validation_loss)
        self.trace.write()
        self._select(result)
        self.data.epoch_complete()

    def _refuse_non_finite(self, scores: ChannelScores) -> None:
        """A diverged run stops here, before its weights can become the selected model."""
        train_loss = self._mean_train_loss()
        if math.isfinite(train_loss) and bool(torch.isfinite(scores.evaluated.scores).all()):
            return
        what = f"the mean training loss is {train_loss}" if not math.isfinite(train_loss) else \
            "the validation scores are not finite"
        raise DataError(
            f"training diverged in epoch {self.current_epoch}: {what}; the data (extreme feature values) or the "
            "optimiser settings (scheduler_maxlr, weight_decay, loss) caused it; no model is written"
        )

    def _select(self, result: EpochResult) -> None:
        """The legacy rules: keep the weights of a strictly better rounded AUC; stop on patience.

        Every host writes the best weights into its own checkpoint folder (local rank 0): each host's
        final scoring reloads them from there.
        """
        if self.selection.update(result.validation_auc, result.epoch) and self.trainer.local_rank == 0:
            self._write_best_weights()
        if self.selection.should_stop:
            log.info("early stopping after epoch %d: validation AUC did not improve for %d epochs",
                     result.epoch, self.selection.patience)
            self.trainer.should_stop = True

    def _write_best_weights(self) -> None:
        tmp = self.best_weights.with_suffix(f".{os.getpid()}.tmp")  # hosts may share the folder
        try:
            self.best_weights.parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(project_state_dict(self.model), tmp)
            os.replace(tmp, self.best_weights)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError.writing("the best model's weights", exc, self.best_weights,
                                      "the model folder keeps what it held") from exc

    def _mean_train_loss(self) -> float:
        """This rank's mean per-batch training loss (rank 0's is the logged one, as in legacy)."""
        return float(self._train_loss_sum / self._train_batches) if self._train_batches else float("nan")

    @torch.no_grad()
    def score(self, loader: Iterable[Batch], name: str, epoch_index: int,
              check_stop: Callable[[], None] = lambda: None) -> ChannelScores:
        """One evaluation pass of every rank over its `loader` (a collective under DDP), in eval mode.

        `check_stop` runs before every batch (a SIGTERM ends the pass there).
        """
        self.eval()
        self.trace.start(final=name, epoch_index=epoch_index)
        scored = EvaluationPass()
        with self.trainer.precision_plugin.forward_context():
            for batch in loader:
                check_stop()
                batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
                batch_scores, y, loss = self._common_step(batch, "predict")
                scored.add(batch["row"], batch_scores, y, loss)
                self.trace.extend("rows", batch["row"].tolist())
        self.trace.write()
        return scored.gather(legacy_order=self.data.legacy_evaluation(name))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(self.model.parameters(), self.config.train)
        # Once per epoch, as the legacy job stepped it (Q19); Lightning's warning that OneCycleLR usually
        # steps per batch is filtered in `tsa/logs.py`.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tsa_config"] = self.config.resolved()
        checkpoint["tsa_rows"] = self.data.row_counts()
        checkpoint["tsa_history"] = [asdict(result) for result in self.history]
        checkpoint["tsa_selection"] = self.selection.state_dict()
        checkpoint["tsa_epoch_progress"] = {"train_loss_sum": self._train_loss_sum.detach().cpu(),
                                            "train_batches": self._train_batches, "epoch_lr": self._epoch_lr}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [EpochResult(**result) for result in checkpoint.get("tsa_history", [])]
        if "tsa_selection" in checkpoint:
            self.selection.load_state_dict(checkpoint["tsa_selection"])
        progress = checkpoint.get("tsa_epoch_progress")
        if progress is not None:
            self._train_loss_sum = progress["train_loss_sum"].to(self.device)
            self._train_batches = progress["train_batches"]
            self._epoch_lr = progress["epoch_lr"]

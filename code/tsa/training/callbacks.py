"""Callbacks: spot-safe checkpoints and exact resume, and the log lines.

- `SpotCheckpoint`: writes `last.ckpt` as a real file, atomically replaced, after every epoch and,
  when the ranks agree on a SIGTERM (`stop.py`), at that training step (not at an epoch's last
  step: see `on_train_batch_end`); resumes exactly: the
  data position is the data module's state, the loops and selection are Lightning's and the
  system's, the RNG states are this callback's.
- `MetricLines`: one fixed-format line per epoch and per N steps that SageMaker's metric regexes
  (`hyperparameters/metric_definitions.json`) and a person can read; no carriage returns; the same
  values as TensorBoard scalars when the job has a TensorBoard folder (MLflow gets the epochs' records:
  `tracking.py`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from tsa.errors import OutputError
from tsa.training.stop import STOP, StopRequested, StopSignal
from tsa.training.system import TsaSystem

log = logging.getLogger("tsa.training")


def _rng_state() -> dict[str, Any]:
    """Every global RNG, in types `torch.load(weights_only=True)` accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.copy()), position, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SpotCheckpoint(L.Callback):
    """Resumable training: `last.ckpt` after each epoch's validation and on an agreed SIGTERM.

    Beyond Lightning's state (model, optimizer, scheduler, loops, the system's selection and the
    data module's position), the checkpoint holds every RNG state and whether it was taken in the
    middle of an epoch. RNG states are restored at the moment they were taken: before the epoch's
    data iterator is made for an epoch-end checkpoint (making it draws from the global RNG), after
    it for a mid-epoch one.
    """

    def __init__(self, path: Path, stop: StopSignal) -> None:
        self.path = path  # the checkpoint folder's `last.ckpt`
        self.stop = stop
        self._mid_epoch = False
        self._resume: dict[str, Any] | None = None
        self._rng_after_iterator: dict[str, Any] | None = None
        self._rng_before_validation: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._in_validation = False  # a checkpoint taken inside a validation step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        assert isinstance(pl_module, TsaSystem)
        pl_module.validation_stop_point = lambda: self._stop_in_validation(trainer)
        pl_module.before_validation = self._before_validation

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stop.agreed(trainer, 0):  # every rank passes here once: a collective is safe
            raise StopRequested.during("the set-up of training", self.path)
        resume, self._resume = self._resume, None
        if resume is None:
            return
        if resume.get("in_validation"):
            self._rng_to_restore = resume["rng"]  # put back when the validation starts again
            # Lightning resumes a validation at the interrupted batch's count, on a new iterator of the
            # loader, and so would end it that many batches short: the validation runs whole again instead.
            trainer.fit_loop.epoch_loop.val_loop.batch_progress.current.reset()
        elif resume["mid_epoch"]:
            self._rng_after_iterator = resume["rng"]
        else:
            _set_rng_state(resume["rng"])

    def _before_validation(self) -> None:
        """Right before the validation's data iterator is made: a resumed validation gets the RNG state the
        interrupted one started with; every validation records it for a checkpoint taken inside it."""
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self._rng_before_validation = _rng_state()

    def _stop_in_validation(self, trainer: L.Trainer) -> None:
        """A SIGTERM during validation: `last.ckpt` with the epoch trained, from which the job validates the
        epoch again and goes on exactly. Every rank stops at its own next batch; only global rank 0 writes,
        without the collective save (the ranks' passes may differ by a batch: they could not meet for it),
        its state being every rank's (weights, optimizer, data position, RNG)."""
        if not STOP.requested:
            return
        epoch = trainer.current_epoch
        if not trainer.is_global_zero:
            stopped = StopRequested(f"training stopped by SIGTERM during the validation of epoch {epoch}; global "
                                    "rank 0 writes the checkpoint with the epoch trained; run the job again to resume")
            stopped.reported = trainer.local_rank == 0
            raise stopped
        self._in_validation = True
        self.save(trainer, alone=trainer.world_size > 1)
        raise StopRequested.in_validation(self.path, epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._rng_after_iterator is not None:
            _set_rng_state(self._rng_after_iterator)
            self._rng_after_iterator = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.stop.agreed(trainer, step):
            return
        if batch_idx + 1 < trainer.num_training_batches:
            self._mid_epoch = True
            self.save(trainer)
            raise StopRequested.after_checkpoint(self.path, trainer.current_epoch, step)
        # At an epoch's last step no checkpoint is taken: Lightning 2.6 resumes one taken there without the
        # epoch's validation, silently one epoch short. Every rank stops in the validation's first batch
        # instead (`_stop_in_validation`).
        STOP.requested = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._mid_epoch = False
            self.save(trainer)

    def save(self, trainer: L.Trainer, alone: bool = False) -> None:
        """`last.ckpt`, the full state (a resume needs it all), replaced atomically.

        `alone` (global rank 0 only): without the collectives, as `Trainer.save_checkpoint` would write it
        before its closing barrier of every rank (Lightning's checkpoint connector has no public form).
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if alone:
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, tmp)
            else:
                trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)  # a real file, replaced atomically (no symlink)
        except OSError as exc:  # disk full, read-only: the environment's; the previous last.ckpt is kept
            tmp.unlink(missing_ok=True)
            outcome = "the previous checkpoint is kept and the model folder keeps what it held"
            raise OutputError.writing("the checkpoint", exc, self.path, outcome) from exc
        if not alone:
            trainer.strategy.barrier("tsa-checkpoint")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._in_validation:
            checkpoint["tsa_resume"] = {"mid_epoch": True, "in_validation": True, "rng": self._rng_before_validation}
        else:
            checkpoint["tsa_resume"] = {"mid_epoch": self._mid_epoch, "rng": _rng_state()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._resume = checkpoint.get("tsa_resume")


def gpu_fields(device: torch.device) -> str:
    """` gpu_utilization=..; gpu_memory_gib=..;` on a GPU (utilisation over the last sample period, from
    NVML, when it can be read; the peak memory this process allocated), empty elsewhere."""
    if device.type != "cuda":
        return ""
    try:
        utilization = f" gpu_utilization={torch.cuda.utilization(device)};"
    except Exception:  # NVML (pynvml) missing or unreadable: the utilisation is left out, never a crash
        utilization = ""
    return f"{utilization} gpu_memory_gib={torch.cuda.max_memory_allocated(device) / 2**30:.2f};"


class MetricLines(L.Callback):
    """`METRIC ...;` lines for CloudWatch metric regexes; plain lines, no progress bars."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self._last_time = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += len(batch["row"])
        step = trainer.global_step
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        rate = self._samples * trainer.world_size / max(now - self._last_time, 1e-9)
        assert isinstance(pl_module, TsaSystem)
        loss = float(pl_module.last_step_loss) / max(len(batch["row"]), 1)
        print(f"METRIC step={step}; epoch={trainer.current_epoch}; step_loss={loss:.6g}; "
              f"samples_per_second={rate:.1f};{gpu_fields(pl_module.device)}", flush=True)
        self._scalars(trainer, {"train/step_loss": loss, "train/samples_per_second": rate}, step)
        self._last_time, self._samples = now, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, TsaSystem)
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.history:
            return
        r = pl_module.history[-1]
        print(f"METRIC epoch={r.epoch}; average_training_loss={r.train_loss:.6g}; "
              f"average_validation_loss={r.validation_loss:.6g}; validation_auc={r.validation_auc:.4f}; "
              f"best_validation_auc={pl_module.selection.tracker.best_auc:.4f}; learning_rate={r.learning_rate:.6g};",
              flush=True)
        self._scalars(trainer, {"train/loss": r.train_loss, "validation/loss": r.validation_loss,
                                "validation/auc": r.validation_auc,
                                "validation/best_auc": pl_module.selection.tracker.best_auc,
                                "train/learning_rate": r.learning_rate}, r.epoch, suffix="_per_epoch")

    @staticmethod
    def _scalars(trainer: L.Trainer, values: dict[str, float], step: int, suffix: str = "") -> None:
        """The same values to the TensorBoard logger, when there is one (per step, or per epoch)."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({f"{key}{suffix}": value for key, value in values.items()}, step=step)

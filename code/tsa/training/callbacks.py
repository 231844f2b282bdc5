"""Callbacks: the legacy model selection, spot-safe checkpoints, SIGTERM, and log lines.

- `LegacySelection`: best model by rounded validation AUC (strictly better, Q21) and early
  stopping on it (ties count as improvement), with the legacy state kept in checkpoints.
- `SpotCheckpoint`: tells the batch stream its epoch (legacy sampler order); writes `last.ckpt`
  as a real file, atomically replaced, after every epoch and when SIGTERM arrives (at the next
  training-batch boundary all ranks agree on); resumes exactly (data position and RNG states).
- `MetricLines`: one fixed-format line per epoch and per N steps that SageMaker's metric regexes
  (`hyperparameters/metric_definitions.json`) and a person can read; no carriage returns.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from tsa.training.plan import is_distributed
from tsa.training.selection import BestModelTracker, LegacyEarlyStopping
from tsa.weights import project_state_dict

log = logging.getLogger("tsa.training")

LAST_CHECKPOINT = "last.ckpt"
BEST_WEIGHTS = "best-model.safetensors"


class StopRequested(Exception):
    """SIGTERM (stop, timeout, spot): raised on every rank once it is safe to exit."""

    @classmethod
    def after_checkpoint(cls, checkpoint: Path, epoch: int, step: int) -> StopRequested:
        return cls(
            f"training stopped by SIGTERM (stop, timeout or spot interruption) at epoch {epoch}, step {step}; "
            f"checkpoint saved to {checkpoint}; run the job again with the same checkpoint folder to resume"
        )

    @classmethod
    def before_training(cls) -> StopRequested:
        return cls("training stopped by SIGTERM before training started; nothing to checkpoint")


class LegacySelection(L.Callback):
    """Best model (strictly higher rounded AUC) and early stopping (ties reset patience)."""

    def __init__(self, patience: int, checkpoint_dir: Path) -> None:
        self.tracker = BestModelTracker()
        self.stopper = LegacyEarlyStopping(patience=patience)
        self.best_path = checkpoint_dir / BEST_WEIGHTS
        self.stop_decided_after: int | None = None  # the epoch whose validation raised the stop flag

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not pl_module.history:  # type: ignore[attr-defined]
            return
        result = pl_module.history[-1]  # type: ignore[attr-defined]
        if self.tracker.update(result.validation_auc, result.epoch) and trainer.is_global_zero:
            self.best_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.best_path.with_suffix(".tmp")
            save_file(project_state_dict(pl_module.model), str(tmp))  # type: ignore[arg-type]
            os.replace(tmp, self.best_path)
        self.stopper.update(result.validation_auc)
        if self.stopper.early_stop and self.stop_decided_after is None:
            self.stop_decided_after = result.epoch
        if self.stopper.early_stop:
            log.info("early stopping after epoch %d: validation AUC did not improve for %d epochs",
                     result.epoch, self.stopper.patience)
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopper.early_stop:  # resumed after the stop decision (e.g. died while exporting)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": vars(self.tracker).copy(), "stopper": vars(self.stopper).copy(),
                "stop_decided_after": self.stop_decided_after}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker = BestModelTracker(**state_dict["tracker"])
        self.stopper = LegacyEarlyStopping(**state_dict["stopper"])
        self.stop_decided_after = state_dict.get("stop_decided_after")


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
    """Resumable training: `last.ckpt` after each epoch's validation and on SIGTERM; exact resume.

    The checkpoint holds, beyond Lightning's state, the epoch and the number of its batches
    already trained (the batch stream skips them on resume) and every RNG state. RNG states are
    restored at the moment they were taken: before the epoch's data iterator is made for an
    epoch-start checkpoint (making it draws from the global RNG), after it for a mid-epoch one.
    """

    def __init__(self, checkpoint_dir: Path, check_every_n_steps: int) -> None:
        self.path = checkpoint_dir / LAST_CHECKPOINT
        self.check_every_n_steps = check_every_n_steps  # multi-rank: steps between the collective stop checks
        self.stop_requested = False
        self.batches_done = 0
        self._resume: dict[str, Any] | None = None
        self._rng_after_iterator: dict[str, Any] | None = None
        self._next: dict[str, int] | None = None
        self._previous_handler: Any = None
        self._launcher: Any = None

    # -- SIGTERM ---------------------------------------------------------------------------
    def _install_handler(self, trainer: L.Trainer) -> None:
        """Own SIGTERM (Lightning's handler runs a collective inside the signal handler)."""
        if signal.getsignal(signal.SIGTERM) != self._on_sigterm:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._launcher = trainer.strategy.launcher

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop_requested:
            log.warning("SIGTERM received: checkpointing at the next training step, then exiting")
            if self._launcher is not None and hasattr(self._launcher, "kill"):
                self._launcher.kill(signum)  # the ranks Lightning started on this host
        self.stop_requested = True

    def _agreed_stop(self, trainer: L.Trainer) -> bool:
        if not is_distributed():
            return self.stop_requested  # no tensor, no host sync
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- epochs and resume -----------------------------------------------------------------
    def _stream(self, trainer: L.Trainer) -> Any:
        return trainer.datamodule.streams.get("train")  # type: ignore[attr-defined]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_handler(trainer)
        resume, self._resume = self._resume, None
        if resume is None:
            return
        trainer.datamodule.set_epoch(resume["epoch"])  # type: ignore[attr-defined]
        self._stream(trainer).start_batch = self.batches_done = resume["batches_done"]
        if resume["batches_done"]:  # mid-epoch
            log.info("resuming epoch %d after batch %d", resume["epoch"], resume["batches_done"])
            self._rng_after_iterator = resume["rng"]
        else:
            _set_rng_state(resume["rng"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stream = self._stream(trainer)
        if self.batches_done and stream.epoch == trainer.current_epoch:
            return  # the resumed epoch, already placed by on_train_start
        trainer.datamodule.set_epoch(trainer.current_epoch)  # type: ignore[attr-defined]
        stream.start_batch = self.batches_done = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._install_handler(trainer)
        if self._rng_after_iterator is not None:
            _set_rng_state(self._rng_after_iterator)
            self._rng_after_iterator = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_done += 1
        step = trainer.global_step
        check = not is_distributed() or step % self.check_every_n_steps == 0
        if check and self._agreed_stop(trainer):
            self.save(trainer)
            raise StopRequested.after_checkpoint(self.path, trainer.current_epoch, step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._next = {"epoch": trainer.current_epoch + 1, "batches_done": 0}  # the epoch is complete
            self.save(trainer)
            self._next = None

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)  # a real file, replaced atomically (no symlink)
        trainer.strategy.barrier("tsa-checkpoint")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        position = self._next or {"epoch": trainer.current_epoch, "batches_done": self.batches_done}
        checkpoint["tsa_resume"] = {**position, "rng": _rng_state()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._resume = checkpoint.get("tsa_resume")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)


class MetricLines(L.Callback):
    """`METRIC ...;` lines for CloudWatch metric regexes; plain lines, no progress bars."""

    def __init__(self, every_n_steps: int, selection: LegacySelection) -> None:
        self.every_n_steps = every_n_steps
        self.selection = selection
        self._last_time = time.perf_counter()
        self._last_step = 0
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += len(batch["row"])
        step = trainer.global_step
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        rate = self._samples * trainer.world_size / max(now - self._last_time, 1e-9)
        loss = float(pl_module.last_step_loss) / max(len(batch["row"]), 1)  # type: ignore[attr-defined]
        print(f"METRIC step={step}; epoch={trainer.current_epoch}; step_loss={loss:.6g}; "
              f"samples_per_second={rate:.1f};", flush=True)
        self._last_time, self._samples = now, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.history:  # type: ignore[attr-defined]
            return
        r = pl_module.history[-1]  # type: ignore[attr-defined]
        print(f"METRIC epoch={r.epoch}; average_training_loss={r.train_loss:.6g}; "
              f"average_validation_loss={r.validation_loss:.6g}; validation_auc={r.validation_auc:.4f}; "
              f"best_validation_auc={self.selection.tracker.best_auc:.4f}; learning_rate={r.learning_rate:.6g};",
              flush=True)

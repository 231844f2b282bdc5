"""SIGTERM during training: the handler records it, the ranks agree on it at step boundaries.

SageMaker sends SIGTERM on a stop, a timeout or a spot interruption and kills the job 120 s
later. `StopSignal` owns the handler while training runs (Lightning's own handler would run a
collective inside the signal handler): it only sets a flag and forwards the signal to the ranks
Lightning started on this host. `agreed(trainer, step)` is the safe point: a single process
reads the flag (no tensor, no host sync); a multi-rank job all-reduces it every
`stop_check_every_n_steps` steps so that every rank stops at the same step. What to do then
(write a checkpoint, exit 143) is the checkpoint callback's business.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from tsa.training.plan import is_distributed

log = logging.getLogger("tsa.training")


class StopRequested(Exception):
    """SIGTERM (stop, timeout, spot): raised on every rank once it is safe to exit."""

    @classmethod
    def after_checkpoint(cls, checkpoint: Any, epoch: int, step: int) -> StopRequested:
        return cls(
            f"training stopped by SIGTERM (stop, timeout or spot interruption) at epoch {epoch}, step {step}; "
            f"checkpoint saved to {checkpoint}; run the job again with the same checkpoint folder to resume"
        )

    @classmethod
    def before_training(cls) -> StopRequested:
        return cls("training stopped by SIGTERM before training started; nothing to checkpoint")


class StopSignal(L.Callback):
    """The SIGTERM handler of the training loop and the ranks' agreement on it."""

    def __init__(self, check_every_n_steps: int) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.requested = False
        self._previous_handler: Any = None
        self._launcher: Any = None

    def _install(self, trainer: L.Trainer) -> None:
        if signal.getsignal(signal.SIGTERM) != self._on_sigterm:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._launcher = trainer.strategy.launcher

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM received: checkpointing at the next training step, then exiting")
            if self._launcher is not None and hasattr(self._launcher, "kill"):
                self._launcher.kill(signum)  # the ranks Lightning started on this host
        self.requested = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._install(trainer)  # Lightning installs its own handlers while it sets up: take SIGTERM back

    def agreed(self, trainer: L.Trainer, step: int) -> bool:
        """Whether every rank stops after training step `step` (collective on check steps)."""
        if not is_distributed():
            return self.requested
        if step % self.check_every_n_steps:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

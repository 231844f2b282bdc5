"""SIGTERM: the handler only records it; every phase of the job checks it at a safe point.

SageMaker sends SIGTERM on a stop, a timeout or a spot interruption and kills the job 120 s
later. The handler (`install_stop_handler`, from the job's start) sets one process-wide flag and
forwards the signal to the ranks Lightning started on this host; raising inside a signal handler
would land wherever the interpreter happens to be. Safe points:
- before training (`check_stop`): after reading the config, after validating the data, before
  the fit: the job exits 143 with "stopped before training";
- training (`StopSignal.agreed`): a single process reads the flag (no tensor, no host sync); a
  multi-rank job all-reduces it every `stop_check_every_n_steps` steps so that every rank stops
  at the same step; the checkpoint callback then writes `last.ckpt` and the job exits 143;
- every validation batch (`SpotCheckpoint`): global rank 0 writes `last.ckpt` with the epoch
  trained, from which the rerun validates the epoch again and goes on exactly (a stop agreed at
  an epoch's last step ends in the validation's first batch: Lightning 2.6 cannot resume a
  checkpoint taken at that step);
- training's set-up and every final-scoring batch (`check_stop_local`): the pass is abandoned,
  the last checkpoint resumes the job;
- the export (before the artifacts are moved into `model/`): the partial set is discarded,
  `model/` keeps what it held, and the checkpoint resumes the job; a SIGTERM during the move
  itself (a few renames) lets it finish, then the job exits 143 with the new set in place.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from tsa.training.world import is_distributed

log = logging.getLogger("tsa.training")


class StopRequested(Exception):
    """SIGTERM (stop, timeout, spot): raised on every rank once it is safe to exit.

    `reported` False: this rank leaves the host's failure file to its local rank 0, which stops too
    and knows more (the checkpoint it wrote).
    """

    reported = True

    @classmethod
    def after_checkpoint(cls, checkpoint: Any, epoch: int, step: int) -> StopRequested:
        return cls(
            f"training stopped by SIGTERM (stop, timeout or spot interruption) at epoch {epoch}, step {step}; "
            f"checkpoint saved to {checkpoint}; run the job again with the same checkpoint folder to resume"
        )

    @classmethod
    def in_validation(cls, checkpoint: Any, epoch: int) -> StopRequested:
        return cls(
            f"training stopped by SIGTERM (stop, timeout or spot interruption) during the validation of epoch {epoch}; "
            f"checkpoint saved to {checkpoint} with the epoch trained; the model folder keeps what it held; run the "
            "job again with the same checkpoint folder to resume (it validates the epoch again)"
        )

    @classmethod
    def during(cls, what: str, checkpoint: Path) -> StopRequested:
        resume = (f"the job resumes from checkpoint '{checkpoint}'" if checkpoint.is_file()
                  else "nothing was checkpointed yet")
        return cls(f"training stopped by SIGTERM during {what}; the model folder keeps what it held; {resume}: "
                   "run the job again with the same checkpoint folder")

    @classmethod
    def after_publish(cls) -> StopRequested:
        return cls("training stopped by SIGTERM while the finished artifacts were moved into the model folder; "
                   "the move was completed: the model folder holds the new complete set")

    @classmethod
    def during_export(cls, checkpoint_dir: Any) -> StopRequested:
        return cls(
            "training stopped by SIGTERM while writing the artifacts; the model folder keeps what it held; "
            f"the trained state is in {checkpoint_dir}: run the job again with it to write the artifacts"
        )


class _StopFlag:
    """The process-wide record of a SIGTERM (and whom to forward it to)."""

    def __init__(self) -> None:
        self.requested = False
        self.launcher: Any = None  # Lightning's launcher of this host's other ranks, once training starts

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM received: stopping at the next safe point")
            if self.launcher is not None and hasattr(self.launcher, "kill"):
                self.launcher.kill(signum)  # the ranks Lightning started on this host
        self.requested = True


STOP = _StopFlag()


def install_stop_handler() -> None:
    """From the job's start: SIGTERM sets the flag (as PID 1, an unhandled SIGTERM would be ignored)."""
    signal.signal(signal.SIGTERM, STOP.on_sigterm)


def check_stop(phase: str) -> None:
    """Raise `StopRequested` if SIGTERM arrived (a safe point outside the training loop)."""
    if STOP.requested:
        raise StopRequested(f"training stopped by SIGTERM {phase}; nothing to checkpoint yet: run the job again")


def wait_in_thread(call: Callable[[], None], timeout_s: float, phase: str) -> bool:
    """Run `call` in a daemon thread and wait for it at most `timeout_s`; True once it returned.

    For a blocking call that a signal cannot interrupt (a name lookup, a network request): neither
    the deadline nor a SIGTERM (`check_stop(phase)`, every `WAIT_POLL_S`) waits for it to return.
    """
    worker = threading.Thread(target=call, name=f"bounded-wait {phase}", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        check_stop(phase)
        worker.join(WAIT_POLL_S)
    return not worker.is_alive()


WAIT_POLL_S = 0.2


def check_stop_local(what: str, checkpoint: Path) -> None:
    """A safe point without a collective: this rank's own flag (training's set-up, evaluation batches).

    Ranks' evaluation passes may differ by a batch (row order, no padding), so an all-reduce could
    pair up wrongly; SIGTERM reaches every rank (SageMaker signals every host, the handler forwards
    it to this host's ranks), and a rank already waiting in the final gather is ended with the
    process group.
    """
    if STOP.requested:
        raise StopRequested.during(what, checkpoint)


class StopSignal(L.Callback):
    """The flag inside the training loop: SIGTERM taken back from Lightning, and the ranks' agreement."""

    def __init__(self, check_every_n_steps: int) -> None:
        self.check_every_n_steps = check_every_n_steps

    @property
    def requested(self) -> bool:
        return STOP.requested

    def _install(self, trainer: L.Trainer) -> None:
        STOP.launcher = trainer.strategy.launcher
        if signal.getsignal(signal.SIGTERM) != STOP.on_sigterm:
            signal.signal(signal.SIGTERM, STOP.on_sigterm)

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

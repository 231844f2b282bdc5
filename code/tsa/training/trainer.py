"""`fit`: build the model, the data, the Lightning Trainer, and train (resuming when possible).

Precision: `32`, legacy AMP (`use_amp=1` -> `16-mixed`, fp16 autocast + GradScaler, GPU only
as in the legacy job: on CPU it falls back to 32 with a warning) or `bf16-mixed`. DDP runs with
unused-parameter detection on, because the legacy layout has parameters that never get a
gradient (Q11, and the whole ccid branch when a batch keeps no ccid row).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from safetensors.torch import load_file

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import TsaDataModule
from tsa.legacy import load_project_state_dict
from tsa.models import build_model
from tsa.training.callbacks import (
    BEST_WEIGHTS,
    LAST_CHECKPOINT,
    LegacySelection,
    MetricLines,
    SpotCheckpoint,
)
from tsa.training.distributed import WorldLayout
from tsa.training.system import EpochResult, TsaSystem

log = logging.getLogger("tsa.training")

PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)  # nodes may start minutes apart


@dataclass
class FitOutcome:
    system: TsaSystem
    trainer: L.Trainer
    datamodule: TsaDataModule
    history: list[EpochResult]
    best_epoch: int | None
    best_auc: float
    stopped_early: bool


def cpu_aware_precision(config: JobConfig, on_cpu: bool) -> str:
    """The configured precision, except where a CPU cannot honour it well."""
    precision = config.runtime.resolved_precision
    if on_cpu and precision == "16-mixed":
        log.warning("precision 16-mixed (use_amp=1) needs a GPU, as the legacy AMP did: training in 32 on CPU")
        return "32"
    if on_cpu and config.runtime.fast_mode and config.runtime.precision is None:
        log.info("fast mode on CPU: fp32 (bf16 autocast is emulated, i.e. slower, on most CPUs)")
        return "32"
    return precision


def build_trainer(config: JobConfig, layout: WorldLayout, callbacks: list[L.Callback], root: Path) -> L.Trainer:
    strategy: Any = "auto"
    if layout.world_size > 1:
        strategy = DDPStrategy(
            find_unused_parameters=True,
            process_group_backend="nccl" if layout.accelerator == "gpu" else "gloo",
            timeout=PROCESS_GROUP_TIMEOUT,
        )
    return L.Trainer(
        accelerator=layout.accelerator,
        devices=layout.devices,
        num_nodes=layout.num_nodes,
        strategy=strategy,
        precision=cpu_aware_precision(config, on_cpu=layout.accelerator == "cpu"),  # type: ignore[arg-type]
        max_epochs=config.train.max_epoch,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the batch streams shard themselves
        default_root_dir=str(root),
    )


def seed_everything(seed: int) -> None:
    """Legacy: seed 0 means "do not seed" (Q20)."""
    if seed:
        L.seed_everything(seed, workers=True)


def fit(config: JobConfig, channels: dict[str, Channel], layout: WorldLayout, checkpoint_dir: Path,
        work_dir: Path) -> FitOutcome:
    """Train; resume from `checkpoint_dir/last.ckpt` when it exists."""
    seed_everything(config.train.seed)
    if config.runtime.fast_mode:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
    model = build_model(config.model)
    system = TsaSystem(model, config)
    datamodule = TsaDataModule(config, channels)
    selection = LegacySelection(config.train.patience, checkpoint_dir)
    # Order matters: selection updates before the metric line and the checkpoint read it.
    callbacks = [selection, MetricLines(config.runtime.log_every_n_steps, selection), SpotCheckpoint(checkpoint_dir)]
    trainer = build_trainer(config, layout, callbacks, work_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    if last.is_file():
        log.info("resuming from %s", last)
    trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    best = checkpoint_dir / BEST_WEIGHTS
    if selection.tracker.best_epoch is not None and best.is_file():
        load_project_state_dict(model, load_file(str(best), device=str(system.device)))
    return FitOutcome(system, trainer, datamodule, system.history, selection.tracker.best_epoch,
                      selection.tracker.best_auc, selection.stopper.early_stop)

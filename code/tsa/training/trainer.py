"""`fit`: build the model, the data, the Lightning Trainer, and train (resuming when possible).

Everything about processes and numerics comes from the run plan (`plan.py`). DDP runs with
unused-parameter detection on, because the legacy layout has parameters that never get a
gradient (Q11, and the whole ccid branch when a batch keeps no ccid row).
"""

from __future__ import annotations

import logging
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from safetensors.torch import load_file

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import TsaDataModule
from tsa.data.channels import EVALUATION_CHANNELS
from tsa.data.sharding import HostShards
from tsa.errors import CheckpointError
from tsa.models import build_model
from tsa.training.callbacks import MetricLines, SpotCheckpoint
from tsa.training.checkpoints import CheckpointFolder
from tsa.training.plan import RunPlan
from tsa.training.result import TrainingResult
from tsa.training.stop import StopSignal, check_stop_local, install_stop_handler
from tsa.training.system import TsaSystem
from tsa.training.trace import RunTrace
from tsa.training.tracking import TrackedEpochs, TrackingLogger
from tsa.weights import load_project_state_dict

log = logging.getLogger("tsa.training")

PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)  # nodes may start minutes apart


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def differing_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`section.key` of every setting a resume must match (`JobConfig.resume_invariant`) whose value differs."""
    keys = []
    for section, names in JobConfig.resume_invariant().items():
        ours, theirs = current.get(section, {}), saved.get(section, {})
        for name in names:
            if ours.get(name) != theirs.get(name):
                keys.append(f"{section}.{name} ({theirs.get(name)!r} in the checkpoint, {ours.get(name)!r} now)")
    return keys


def check_resumable(path: Path, config: JobConfig, rows: dict[str, int | list[int]]) -> None:
    """Refuse a `last.ckpt` that cannot be read safely or was written by another job, before training.

    Loaded with `weights_only=True` (tensors and plain containers only: a pickle that would run
    code is refused); it must hold the config and the channel sizes the job wrote into it.
    """
    remedy = "delete it (or set ignore_checkpoint=true) to train from the start"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, random bytes, a pickle with code: all unusable
        raise CheckpointError(f"checkpoint '{path}' cannot be read safely ({_first_line(exc)}): {remedy}") from exc
    saved = checkpoint.get("tsa_config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint '{path}' was not written by tsa-training (no job config in it): {remedy}")
    differing = differing_settings(saved, config.resolved())
    if checkpoint.get("tsa_rows") not in (None, rows):
        differing.append(f"channel sizes ({checkpoint['tsa_rows']} in the checkpoint, {rows} now)")
    if differing:
        raise CheckpointError(f"checkpoint '{path}' belongs to another job or config: {'; '.join(differing)}; "
                              f"{remedy}, or point checkpoint_dir at the folder of the job that wrote it")


def build_trainer(max_epochs: int, plan: RunPlan, callbacks: list[L.Callback], root: Path,
                  tensorboard_dir: Path | None = None, tracker: TrackingLogger | None = None) -> L.Trainer:
    layout = plan.world
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
        precision=plan.precision,
        max_epochs=max_epochs,
        callbacks=callbacks,
        # Lightning's TensorBoard logger (tensorboard, else tensorboardX), global rank 0 only; the
        # scalars are the METRIC lines' (`MetricLines`). The MLflow logger: global rank 0 of a tracked job.
        logger=_loggers(tensorboard_dir, tracker),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the batch streams shard themselves
        default_root_dir=str(root),
    )


def _loggers(tensorboard_dir: Path | None, tracker: TrackingLogger | None) -> list[Logger]:
    loggers: list[Logger] = [TensorBoardLogger(str(tensorboard_dir), name="", version="")] if tensorboard_dir else []
    return [*loggers, tracker] if tracker is not None else loggers


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch as the legacy job did; seed 0 means "do not seed" (Q20).

    Not Lightning's `seed_everything`: it records the seed in `PL_GLOBAL_SEED`, and the DDP strategy
    then re-seeds every rank after the model is built, which the legacy job never did (the dropout
    stream of a multi-process run would start elsewhere).
    """
    os.environ.pop("PL_GLOBAL_SEED", None)
    if seed:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def fit(config: JobConfig, channels: dict[str, Channel], plan: RunPlan, checkpoints: CheckpointFolder,
        work_dir: Path, trace_dir: Path | None = None, tensorboard_dir: Path | None = None,
        host_shards: HostShards | None = None, tracker: TrackingLogger | None = None) -> TrainingResult:
    """Train (resuming from the checkpoint folder's `last.ckpt` when it exists), then score the selected model.

    The final scoring is the legacy post-training pass: every rank reloads the best weights and
    evaluates validation, then calibration (then test), in the sampler order of the epoch index
    after the last trained epoch, as the legacy early-stop branch did.
    """
    seed_everything(config.train.seed)
    if plan.fast_matmul:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
    model = build_model(config.model, fused_attention=plan.fused_attention)
    trace = RunTrace(trace_dir)
    trace.record_init(model)
    best = checkpoints.best_weights
    system = TsaSystem(model, config, plan, best, trace)
    datamodule = TsaDataModule(config, channels, pin_memory=plan.pin_memory, host_shards=host_shards)
    stop = StopSignal(config.runtime.stop_check_every_n_steps)
    callbacks = [stop, MetricLines(config.runtime.log_every_n_steps), SpotCheckpoint(checkpoints.last, stop)]
    if tracker is not None:
        callbacks.append(TrackedEpochs(tracker))
    trainer = build_trainer(config.train.max_epoch, plan, callbacks, work_dir, tensorboard_dir, tracker)
    last = checkpoints.last
    resume = checkpoints.resuming
    if resume:
        check_resumable(last, config, datamodule.row_counts())
        log.info("resuming from %s", last)
    elif last.is_file():
        log.info("ignore_checkpoint: training from the start; %s will be overwritten", last)
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)
    finally:  # Lightning's teardown puts back the handlers it found at its set-up: the job keeps its own
        install_stop_handler()
    selection = system.selection
    if selection.tracker.best_epoch is not None and best.is_file():
        try:
            best_state = load_file(str(best), device=str(system.device))
        except Exception as exc:  # a truncated or foreign file
            raise CheckpointError(f"best weights '{best}' cannot be read ({_first_line(exc)}): delete the checkpoint "
                                  "folder's files to train from the start") from exc
        load_project_state_dict(model, best_state)
    epoch_index = len(system.history)
    scores = {name: system.score(datamodule.evaluation_loader(name, epoch_index), name, epoch_index,
                                 check_stop=lambda n=name: check_stop_local(f"the final scoring of '{n}'",
                                                                                    last))
              for name in EVALUATION_CHANNELS if name in channels}
    return TrainingResult(
        model=model, history=list(system.history), best_epoch=selection.tracker.best_epoch,
        best_auc=selection.tracker.best_auc, early_stop=selection.early_stop, scores=scores,
        ids={name: datamodule.ids(name, s.by_row.rows.numpy()) for name, s in scores.items()},
        is_global_zero=trainer.is_global_zero,
    )

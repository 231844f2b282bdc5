"""The container job: contract -> config -> data -> fit -> artifacts, with one error policy.

Run it as SageMaker does (`docker run IMAGE train`, i.e. `tsa train`), or locally with
`SAGEMAKER_BASE_DIR=<job folder> tsa train`. When the hyperparameters name `sagemaker_program`,
the job is the user's script, run by the SageMaker training toolkit (`toolkit.py`).

Error policy: a `JobError` is the user's to fix -> exit 2; anything else is our bug -> exit 1;
SIGTERM (stop, timeout, spot) -> a resumable checkpoint, then exit 143 with a stop notice.
Either way the first line of `/opt/ml/output/failure` is the human cause (SageMaker shows only
the first 1024 characters), the traceback goes to stderr only, and an existing failure file
(written by the process that saw the real cause, e.g. a worker rank) is never overwritten.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tsa.artifacts import ModelFolder, export_artifacts
from tsa.config import JobConfig
from tsa.contract import (
    Channel,
    JobPaths,
    ResourceConfig,
    check_writable,
    choose_checkpoint_dir,
    load_hyperparameters,
    read_channels,
    read_resource_config,
    training_resources,
)
from tsa.data import open_channel, validate_channel
from tsa.data.loader import configure_allocator
from tsa.data.sharding import HostShards
from tsa.errors import INTERNAL_ERROR_EXIT_CODE, STOPPED_EXIT_CODE, USER_ERROR_EXIT_CODE, JobError
from tsa.logs import configure_logging
from tsa.toolkit import (
    check_built_in_distribution,
    check_script_mode_contract,
    export_sm_environment,
    run_script_mode,
    script_mode_requested,
)
from tsa.training import (
    STOP,
    CheckpointFolder,
    RunPlan,
    StopRequested,
    TrackingLogger,
    TrainingResult,
    check_memory,
    check_stop,
    check_tracking,
    configure_environment,
    export_shards,
    fit,
    inherited_shards,
    install_stop_handler,
    is_launched_worker,
    meet,
    open_tracking,
    output_bytes,
    peers_watched,
    plan_run,
)

log = logging.getLogger("tsa")

FAILURE_FILE_LIMIT = 1024


def clear_previous_outcome(paths: JobPaths) -> None:
    """A new run of a job folder (local reruns, a resume after a stop) starts without the old status."""
    for status in (paths.failure_file, paths.success_file):
        if status.is_file():
            log.info("removing %s of a previous run", status)
            try:
                status.unlink()
            except OSError as exc:  # an unwritable output folder is reported by the job's own checks
                log.warning("cannot remove %s (%s)", status, exc.strerror or exc)


def failure_text(exc: BaseException) -> str:
    """The failure-file text: the cause first, within SageMaker's 1024 shown characters."""
    if isinstance(exc, (JobError, StopRequested)):
        text = str(exc)
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); this is a tsa-training bug, see the job log"
    if len(text) > FAILURE_FILE_LIMIT:
        text = text[: FAILURE_FILE_LIMIT - 3] + "..."
    return text + "\n"


def write_failure(paths: JobPaths, exc: BaseException) -> None:
    """Write `output/failure` unless a (more specific) one exists already.

    Ranks of one host share the folder: each writes its own temporary file and links it into
    place, which fails if another rank was first (create-if-absent, atomic).
    """
    target = paths.failure_file
    if target.exists():
        log.info("failure file %s exists already: kept", target)
        return
    tmp = target.with_name(f".failure.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(failure_text(exc), encoding="utf-8")
        os.link(tmp, target)
    except FileExistsError:
        log.info("failure file %s was written by another process: kept", target)
    except OSError as write_error:  # the output folder itself is unusable: the cause stays in the log
        log.error("cannot write the failure file %s (%s); the cause is the 'job failed' line above", target,
                  write_error.strerror or write_error)
    finally:
        tmp.unlink(missing_ok=True)


def exit_code_for(exc: BaseException) -> int:
    return USER_ERROR_EXIT_CODE if isinstance(exc, JobError) else INTERNAL_ERROR_EXIT_CODE


def run_guarded(paths: JobPaths, job: Callable[[], object]) -> int:
    """Run `job`, map its exception to an exit code, and record the cause."""
    try:
        job()
    except StopRequested as exc:
        log.warning("%s", exc)
        if exc.reported:
            write_failure(paths, exc)
        return STOPPED_EXIT_CODE
    except Exception as exc:  # a JobError (exit 2: the user's or the environment's) or a defect (exit 1)
        traceback.print_exc(file=sys.stderr)
        log.error("job failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        write_failure(paths, exc)
        return exit_code_for(exc)
    return 0


def load_job_config(paths: JobPaths) -> JobConfig:
    """Read and validate the job's hyperparameters."""
    return JobConfig.from_hyperparameters(load_hyperparameters(paths))


def validate_job_data(config: JobConfig, channels: dict[str, Channel]) -> dict[str, int]:
    """Open and check every channel present; returns examples per channel."""
    stop_point = functools.partial(check_stop, "before training (while validating the data)")
    return {name: validate_channel(open_channel(channel, config.data, config.model), config.model,
                                   before_chunk=stop_point)
            for name, channel in channels.items()}


def train_job(paths: JobPaths, hyperparameters: Mapping[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """The `tsa train` job: validate, agree with the other hosts, fit, and (global rank 0) export the artifacts.

    Returns the final metrics per split on global rank 0 (empty elsewhere).
    """
    if not is_launched_worker():  # before anything else: a complete set, whatever an earlier attempt left
        ModelFolder(paths.model_dir).recover()
    raw = load_hyperparameters(paths) if hyperparameters is None else dict(hyperparameters)
    check_built_in_distribution(raw)
    config = JobConfig.from_hyperparameters(raw)
    check_stop("before training (while reading the config)")
    resources = training_resources(read_resource_config(paths), raw)
    if not resources.trains_here:
        log.info("host %s is not in the training instance groups (hosts %s): nothing to train here",
                 resources.describe_host(resources.current_host), list(resources.hosts))
        return {}
    channels = read_channels(paths)
    plan = plan_run(config.runtime, resources)
    checkpoints = CheckpointFolder(*choose_checkpoint_dir(paths, config.runtime.checkpoint_dir),
                                   ignored=config.runtime.ignore_checkpoint)
    if is_launched_worker():  # the ranks Lightning starts inherit the launcher's checks and agreement
        host_shards = inherited_shards()
    else:
        host_shards = prepare_host(paths, config, raw, resources, channels, plan, checkpoints)
    configure_environment(plan.world)
    check_stop("before training")
    trace_dir = paths.trace_dir if config.runtime.trace else None
    if trace_dir is not None and not is_launched_worker() and not checkpoints.resuming:
        shutil.rmtree(trace_dir, ignore_errors=True)  # a fresh run's trace (a resumed run appends)
    tracker = open_tracking(config.runtime, config.resolved(), checkpoints) if is_global_zero(plan) else None
    with peers_watched(plan.world, checkpoints.path):
        result = fit(config, channels, plan, checkpoints, work_dir=paths.lightning_dir, trace_dir=trace_dir,
                     tensorboard_dir=paths.tensorboard(config.runtime.tensorboard_dir), host_shards=host_shards,
                     tracker=tracker)
    distributed = dist.is_available() and dist.is_initialized()
    final: dict[str, dict[str, float]] = {}
    try:
        if result.is_global_zero:
            final = export_tracked_artifacts(paths, config, result, checkpoints, tracker)
    finally:
        if distributed:
            # Every rank waits for rank 0's export: SDK local mode stops all containers as soon
            # as one exits, which would cut the export short.
            dist.barrier()
            dist.destroy_process_group()
    return final


def is_global_zero(plan: RunPlan) -> bool:
    """Before the Trainer exists: whether this process will be global rank 0 (node 0's launching process)."""
    return plan.world.node_rank == 0 and not is_launched_worker()


def export_tracked_artifacts(paths: JobPaths, config: JobConfig, result: TrainingResult, checkpoints: CheckpointFolder,
                             tracker: TrackingLogger | None) -> dict[str, dict[str, float]]:
    """`export_job_artifacts`, then (a tracked job) the final metrics and `metrics.json` to the run, which ends."""
    try:
        final = export_job_artifacts(paths, config, result, checkpoints)
    except BaseException:
        if tracker is not None:
            tracker.finalize("failed")
        raise
    if tracker is not None:
        tracker.finish(final, paths.model_dir / "metrics.json")
    return final


def prepare_host(paths: JobPaths, config: JobConfig, raw: Mapping[str, Any], resources: ResourceConfig,
                 channels: dict[str, Channel], plan: RunPlan, checkpoints: CheckpointFolder) -> HostShards:
    """Once per host, before training: the environment, every check, and (several hosts) the agreement.

    On a multi-host job a failed check is first reported to the other hosts, so that every host stops
    with it instead of waiting for this one.
    """
    export_sm_environment(paths, resources, channels, raw)
    log.info("checkpoint folder: %s (%s)", checkpoints.path, checkpoints.source)
    error: JobError | None = None
    rows: dict[str, int] = {}
    try:
        check_tracking()
        check_memory(config.model, config.train.batch_size, plan.world)
        needed = output_bytes(config.model)
        for folder, what, key in ((paths.model_dir, "model folder", "model"),
                                  (paths.output_data_dir, "output folder", "output"),
                                  (checkpoints.path, f"checkpoint folder ({checkpoints.source})", "checkpoints")):
            check_writable(folder, what, needed[key])
        rows = validate_job_data(config, channels)
    except JobError as exc:
        if resources.num_nodes == 1:
            raise
        error = exc
    check_stop("before training (while validating the data)")
    if error is None:
        log.info("resolved config: %s", json.dumps(config.resolved(), sort_keys=True))
        log.info("run plan: %s", plan.describe(resources.current_host))
    shards = HostShards()  # one host: nothing differs between hosts
    if resources.num_nodes > 1:
        sharded = {name: rows[name] for name, channel in channels.items() if channel.sharded_by_host and name in rows}
        shards = meet(resources, config, plan.world, checkpoints.resume_files(), sharded_rows=sharded,
                      local_error=error)
    export_shards(shards)
    return shards


def export_job_artifacts(paths: JobPaths, config: JobConfig, result: TrainingResult,
                         checkpoints: CheckpointFolder) -> dict[str, dict[str, float]]:
    """Write the artifacts of the selected model and its scores."""
    final = export_artifacts(paths, config, result, resume_from=checkpoints.path,
                             stop_point=lambda: check_stop_during_export(checkpoints))
    for split, performance in final.items():
        print(f"METRIC final split={split}; " + " ".join(f"{k}={v};" for k, v in performance.items()), flush=True)
    log.info("artifacts written to %s (model) and %s (predictions, plots)", paths.model_dir, paths.output_data_dir)
    if STOP.requested:  # arrived during the publish, which a flag does not interrupt
        raise StopRequested.after_publish()
    return final


def check_stop_during_export(checkpoints: CheckpointFolder) -> None:
    if STOP.requested:
        raise StopRequested.during_export(checkpoints.path)


def main_train(base_dir: Path | None = None) -> int:
    """Entry of `tsa train`: returns the process exit code."""
    configure_logging()
    configure_allocator()
    paths = JobPaths.from_root(base_dir)
    install_stop_handler()
    if not is_launched_worker():
        clear_previous_outcome(paths)
        if script_mode_requested(paths):
            return run_guarded(paths, lambda: check_script_mode_contract(paths)) or run_script_mode(paths)
    code = run_guarded(paths, lambda: train_job(paths))
    if code == 0 and not is_launched_worker():
        write_success(paths)
    return code


def write_success(paths: JobPaths) -> None:
    """`output/success`, as SageMaker's toolkits write it (an unwritable folder was reported already)."""
    try:
        paths.success_file.write_text("", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write %s (%s)", paths.success_file, exc.strerror or exc)

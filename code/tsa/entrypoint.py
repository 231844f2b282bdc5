"""The container job: contract -> config -> data -> fit -> artifacts, with one error policy.

Run it as SageMaker does (`docker run IMAGE train`, i.e. `tsa train`), or locally with
`SAGEMAKER_BASE_DIR=<job folder> tsa train`.

Error policy: a `JobError` is the user's to fix -> exit 2; anything else is our bug -> exit 1.
Either way the first line of `/opt/ml/output/failure` is the human cause (SageMaker shows only
the first 1024 characters), the traceback goes to stderr only, and an existing failure file
(written by the process that saw the real cause, e.g. a worker rank) is never overwritten.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from tsa.config import JobConfig
from tsa.contract import Channel, JobPaths, load_hyperparameters, read_channels, read_resource_config
from tsa.data import open_channel, validate_channel
from tsa.data.loader import configure_allocator
from tsa.errors import INTERNAL_ERROR_EXIT_CODE, USER_ERROR_EXIT_CODE, JobError

log = logging.getLogger("tsa")

FAILURE_FILE_LIMIT = 1024


def configure_logging(level: int = logging.INFO) -> None:
    """One plain line per record (CloudWatch-friendly), rank-tagged under DDP."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )


def failure_text(exc: BaseException) -> str:
    """The failure-file text: the cause first, within SageMaker's 1024 shown characters."""
    if isinstance(exc, JobError):
        text = str(exc)
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); this is a tsa-training bug, see the job log"
    if len(text) > FAILURE_FILE_LIMIT:
        text = text[: FAILURE_FILE_LIMIT - 3] + "..."
    return text + "\n"


def write_failure(paths: JobPaths, exc: BaseException) -> None:
    """Write `output/failure` unless a (more specific) one exists already."""
    target = paths.failure_file
    if target.exists():
        log.info("failure file %s exists already: kept", target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".failure.tmp")
    tmp.write_text(failure_text(exc), encoding="utf-8")
    tmp.replace(target)


def exit_code_for(exc: BaseException) -> int:
    return USER_ERROR_EXIT_CODE if isinstance(exc, JobError) else INTERNAL_ERROR_EXIT_CODE


def run_guarded(paths: JobPaths, job: Callable[[], None]) -> int:
    """Run `job`, map its exception to an exit code, and record the cause."""
    try:
        job()
    except (JobError, Exception) as exc:
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
    return {name: validate_channel(open_channel(channel, config), config.model) for name, channel in channels.items()}


def train_job(paths: JobPaths) -> None:
    """The `tsa train` job."""
    config = load_job_config(paths)
    channels = read_channels(paths)
    resources = read_resource_config(paths)
    validate_job_data(config, channels)
    log.info("resolved config: %s", config.resolved())
    log.info("hosts %s, this host %s (node rank %d)", resources.ordered_hosts, resources.current_host,
             resources.node_rank)
    paths.model_dir.mkdir(parents=True, exist_ok=True)


def main_train(base_dir: Path | None = None) -> int:
    """Entry of `tsa train`: returns the process exit code."""
    configure_logging()
    configure_allocator()
    paths = JobPaths.from_root(base_dir)
    return run_guarded(paths, lambda: train_job(paths))

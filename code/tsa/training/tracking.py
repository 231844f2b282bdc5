"""MLflow experiment tracking: on when `MLFLOW_TRACKING_URI` is set (docs/mlflow.md).

One run per job, on global rank 0 only, through Lightning's `MLFlowLogger`: the resolved config as
params, each epoch's record (as `metrics.json` keeps it, step = epoch), then the final split
metrics and `metrics.json` itself once the artifacts are written. The run's id is kept in the
checkpoint folder (`CheckpointFolder.tracking_run`), so that a job resumed from that folder (spot, a
rerun) goes on in the same run instead of starting a second one.

Tracking never fails or hangs a job that is otherwise fine: MLflow's HTTP timeout and retries get
short defaults (unless set), the artifact upload (which may go to S3 through boto3, outside those
settings) has a deadline of its own, and the first error (a server that is down or does not answer) turns
tracking off for the rest of the job with one warning. What the job can know before training is
checked there: an `arn:` URI (SageMaker's managed MLflow) needs the `sagemaker-mlflow` plugin.

Nothing here imports mlflow unless the variable is set (Lightning's logger imports it when built).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from typing_extensions import override

from tsa.config import RuntimeConfig
from tsa.errors import ConfigError
from tsa.training.checkpoints import CheckpointFolder
from tsa.training.stop import STOP

log = logging.getLogger("tsa.tracking")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
JOB_NAME_ENV = "TRAINING_JOB_NAME"  # set by SageMaker in every training container
SAGEMAKER_PLUGIN = "sagemaker-mlflow"
# MLflow's own defaults (120 s per request, 7 retries, backoff factor 2) would hold a job for many minutes
# on a server that does not answer; these bound the first failing call (then tracking is off) to ~20 s.
# Telemetry off: a training container usually has no way out, and the job's run is what is tracked.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

# The artifact upload: with an ARN (or any S3 artifact store) it is boto3's, whose defaults (60 s to connect,
# 60 s to read, retried) are not bounded by the MLFLOW_HTTP_* settings.
UPLOAD_DEADLINE_S = 30.0
_ABANDONED = threading.Event()  # a call given up at its deadline still runs in a thread of its own

T = TypeVar("T")


def tracking_uri() -> str | None:
    """The tracking URI the job was given, if any."""
    return os.environ.get(TRACKING_URI_ENV) or None


def check_tracking() -> None:
    """Before training: refuse a tracking URI this image cannot serve (the client or the ARN plugin missing).

    Looks the packages up without importing them.
    """
    uri = tracking_uri()
    if uri is None:
        return
    if find_spec("mlflow") is None:
        raise ConfigError([f"{TRACKING_URI_ENV}={uri!r} needs the MLflow client, which this image lacks: install "
                           "'tsa-training[tracking]' (pip install mlflow-skinny), or unset the variable"])
    if uri.startswith("arn:") and find_spec("sagemaker_mlflow") is None:
        raise ConfigError([f"{TRACKING_URI_ENV}={uri!r} is a SageMaker MLflow ARN, which needs the MLflow plugin "
                           f"'{SAGEMAKER_PLUGIN}', missing from this image: install it (pip install {SAGEMAKER_PLUGIN},"
                           " or 'tsa-training[tracking]'), or give the tracking server's https URI"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class TrackingLogger(MLFlowLogger):
    """Lightning's MLflow logger that never fails the job: the first error turns it off, with one warning.

    Lightning ends the run when `fit` ends; a successful fit's run is ended by `finish` instead, after the
    job's final metrics and artifact (a failed fit's run ends FAILED, as Lightning reports it).
    """

    def __init__(self, uri: str, experiment_name: str, run_name: str | None, run_id: str | None = None) -> None:
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, run_id=run_id)
        self.disabled = False
        self.ended = False

    def _guarded(self, what: str, call: Callable[[], T]) -> T | None:
        if self.disabled:
            return None
        started = time.monotonic()
        try:
            return call()
        except Exception as exc:  # any failure of the server, the network or the client: tracking's only
            self.disabled = True
            log.warning("MLflow tracking at %s failed while %s after %.1f s (%s): tracking is off for the rest of "
                        "the job, which goes on", self._tracking_uri, what, time.monotonic() - started,
                        _first_line(exc))
            return None

    def _guarded_within(self, what: str, call: Callable[[], object], deadline_s: float) -> None:
        """`_guarded`, for a call that no MLflow setting bounds: given up after `deadline_s` (the run goes on).

        The call runs in a daemon thread; one given up is left behind, and `left_work_behind` tells the
        job's exit not to wait for it (boto3's transfer threads would hold the interpreter's exit).
        """
        if self.disabled:
            return
        worker = threading.Thread(target=self._guarded, args=(what, call), name="tsa-mlflow", daemon=True)
        worker.start()
        worker.join(deadline_s)
        if worker.is_alive():
            _ABANDONED.set()
            log.warning("MLflow tracking at %s gave up while %s after %.1f s (no answer within the deadline): the run "
                        "goes on without it", self._tracking_uri, what, deadline_s)

    @property
    @override
    def name(self) -> str | None:
        """The experiment id once the run exists (never a request: Lightning may ask at any time)."""
        return self._experiment_id

    @property
    @override
    def version(self) -> str | None:
        """The run id once the run exists (never a request)."""
        return self._run_id

    @override
    def log_hyperparams(self, params: Any) -> None:
        self._guarded("logging the parameters", functools.partial(super().log_hyperparams, params))

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._guarded("logging metrics", functools.partial(super().log_metrics, metrics, step))

    @override
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of a failed fit: the run ends FAILED, or KILLED when the job was stopped (SIGTERM)."""
        if status != "success" and not self.ended:
            self.ended = True
            self._guarded("ending the run", functools.partial(super().finalize, "KILLED" if STOP.requested else status))

    def start(self, params: Mapping[str, Any]) -> None:
        """Create the run and log `params`: before training, a server that does not answer costs its delay here."""
        started = time.monotonic()
        self.log_hyperparams(dict(params))
        if not self.disabled:
            log.info("MLflow run %s (%s) of experiment '%s' at %s, in %.1f s", self._run_id, self._run_name or
                     "unnamed", self._experiment_name, self._tracking_uri, time.monotonic() - started)

    def resume(self, params: Mapping[str, Any]) -> None:
        """Go on in the run `run_id` named: RUNNING again, and the params it lacks logged.

        MLflow keeps a param's first value: one that differs now (a resume may change `test_name`) is named
        in the log and left as it was.
        """
        started = time.monotonic()
        run = self._guarded("reopening the run", lambda: self.experiment.get_run(self._run_id))
        if run is None:
            return
        self._guarded("reopening the run", lambda: self.experiment.update_run(self._run_id, status="RUNNING"))
        flat = _flatten_params(params)
        changed = sorted(key for key, value in flat.items() if run.data.params.get(key, value) != value)
        missing = {key: value for key, value in flat.items() if key not in run.data.params}
        if missing:
            self.log_hyperparams(missing)
        if changed:
            log.info("MLflow run %s keeps the first value of %s (params cannot change)", self._run_id, changed)
        if not self.disabled:
            log.info("MLflow run %s (%s) of experiment '%s' at %s resumed, in %.1f s", self._run_id, run.info.run_name,
                     self._experiment_name, self._tracking_uri, time.monotonic() - started)

    def finish(self, final: Mapping[str, Mapping[str, float]], metrics_file: Path) -> None:
        """After the artifacts: the final split metrics (`final/<split>/<measure>`), `metrics_file` as an
        artifact, and the run ended FINISHED."""
        self.log_metrics({f"final/{split}/{measure}": value
                          for split, measures in final.items() for measure, value in measures.items()})
        self._guarded_within("uploading metrics.json",
                             lambda: self.experiment.log_artifact(self._run_id, str(metrics_file)), UPLOAD_DEADLINE_S)
        if self._initialized and not self.ended:
            self.ended = True
            self._guarded("ending the run", lambda: self.experiment.set_terminated(self._run_id, "FINISHED"))


class TrackedEpochs(L.Callback):
    """Each epoch's record, the `METRIC epoch=` line's values as `metrics.json` keeps them, step = epoch."""

    def __init__(self, tracker: TrackingLogger) -> None:
        self.tracker = tracker

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if trainer.sanity_checking or not history:
            return
        record = asdict(history[-1])
        epoch = record.pop("epoch")
        self.tracker.log_metrics(record, step=epoch)


def left_work_behind() -> bool:
    """Whether a tracking call was given up at its deadline and still runs: the job then exits without waiting."""
    return _ABANDONED.is_set()


def bound_http_defaults() -> None:
    """MLflow's HTTP settings (and telemetry) get `MLFLOW_ENV_DEFAULTS` where the job's environment sets none."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """`<section>/<key>` -> the value as MLflow stores it (Lightning's flattening: str, at most 250 characters)."""
    return {f"{section}/{key}": str(value)[:250] for section, values in params.items() for key, value in values.items()}


def _earlier_run(run_file: Path, uri: str, experiment: str) -> str | None:
    """The run id a stopped attempt of this job kept in `run_file`, if it was tracked at `uri` in `experiment`."""
    try:
        kept = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("tracking_uri") != uri or kept.get("experiment") != experiment:
        return None
    run_id = kept.get("run_id")
    return run_id if isinstance(run_id, str) and run_id else None


def _keep_run(run_file: Path, uri: str, experiment: str, run_id: str | None) -> None:
    """`run_file` names the job's run (written whole: a temporary file, then a rename)."""
    record = {"tracking_uri": uri, "experiment": experiment, "run_id": run_id}
    tmp = run_file.with_name(f".{run_file.name}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, run_file)
    except OSError as exc:  # the checkpoint folder was checked writable; a resume would then start a new run
        log.warning("cannot keep the MLflow run id in %s (%s): a resumed job would start a new run", run_file,
                    exc.strerror or exc)


def open_tracking(runtime: RuntimeConfig, params: Mapping[str, Any],
                  checkpoints: CheckpointFolder) -> TrackingLogger | None:
    """On global rank 0 of a job given a tracking URI: the job's run, created (or, when the job resumes, the
    run the checkpoint folder names), with `params` logged."""
    uri = tracking_uri()
    if uri is None:
        return None
    bound_http_defaults()
    run_file = checkpoints.tracking_run
    earlier = _earlier_run(run_file, uri, runtime.mlflow_experiment_name) if checkpoints.resuming else None
    run_name = runtime.mlflow_run_name or os.environ.get(JOB_NAME_ENV) or None
    try:
        tracker = TrackingLogger(uri, runtime.mlflow_experiment_name, run_name, run_id=earlier)
    except Exception as exc:  # a URI the client cannot resolve to a store
        log.warning("MLflow tracking at %s cannot start (%s): the job goes on without it", uri, _first_line(exc))
        return None
    if earlier is None:
        tracker.start(params)
    else:
        tracker.resume(params)
    if tracker.disabled:
        return None  # Lightning reads `experiment` itself: a logger with no run stays out
    _keep_run(run_file, uri, runtime.mlflow_experiment_name, tracker.version)
    return tracker

"""MLflow experiment tracking: on when `MLFLOW_TRACKING_URI` is set (docs/mlflow.md).

One run per job, on global rank 0 only, through Lightning's `MLFlowLogger`: the resolved config as
params, each epoch's record (as `metrics.json` keeps it, step = epoch), then the final split
metrics and `metrics.json` itself once the artifacts are written.

Tracking never fails or hangs a job that is otherwise fine: MLflow's HTTP timeout and retries get
short defaults (unless set), and the first error (a server that is down or does not answer) turns
tracking off for the rest of the job with one warning. What the job can know before training is
checked there: an `arn:` URI (SageMaker's managed MLflow) needs the `sagemaker-mlflow` plugin.

Nothing here imports mlflow unless the variable is set (Lightning's logger imports it when built).
"""

from __future__ import annotations

import functools
import logging
import os
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

    def __init__(self, uri: str, experiment_name: str, run_name: str | None) -> None:
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri)
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
        if status != "success" and not self.ended:
            self.ended = True
            self._guarded("ending the run", functools.partial(super().finalize, status))

    def start(self, params: Mapping[str, Any]) -> None:
        """Create the run and log `params`: before training, a server that does not answer costs its delay here."""
        started = time.monotonic()
        self.log_hyperparams(dict(params))
        if not self.disabled:
            log.info("MLflow run %s (%s) of experiment '%s' at %s, in %.1f s", self._run_id, self._run_name or
                     "unnamed", self._experiment_name, self._tracking_uri, time.monotonic() - started)

    def finish(self, final: Mapping[str, Mapping[str, float]], metrics_file: Path) -> None:
        """After the artifacts: the final split metrics (`final/<split>/<measure>`), `metrics_file` as an
        artifact, and the run ended FINISHED."""
        self.log_metrics({f"final/{split}/{measure}": value
                          for split, measures in final.items() for measure, value in measures.items()})
        self._guarded("uploading metrics.json", lambda: self.experiment.log_artifact(self._run_id, str(metrics_file)))
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


def bound_http_defaults() -> None:
    """MLflow's HTTP settings (and telemetry) get `MLFLOW_ENV_DEFAULTS` where the job's environment sets none."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def open_tracking(runtime: RuntimeConfig, params: Mapping[str, Any]) -> TrackingLogger | None:
    """On global rank 0 of a job given a tracking URI: the job's run, created, with `params` logged."""
    uri = tracking_uri()
    if uri is None:
        return None
    bound_http_defaults()
    run_name = runtime.mlflow_run_name or os.environ.get(JOB_NAME_ENV) or None
    try:
        tracker = TrackingLogger(uri, runtime.mlflow_experiment_name, run_name)
    except Exception as exc:  # a URI the client cannot resolve to a store
        log.warning("MLflow tracking at %s cannot start (%s): the job goes on without it", uri, _first_line(exc))
        return None
    tracker.start(params)
    return None if tracker.disabled else tracker  # Lightning reads `experiment` itself: a logger with no run stays out

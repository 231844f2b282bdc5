"""`tsa launch`: start this image as a SageMaker training job (SDK v3 `ModelTrainer` or v2 `Estimator`).

    tsa launch --image-uri 123.dkr.ecr.eu-west-1.amazonaws.com/tsa-training:1 --role arn:aws:iam::...:role/x \\
        --instance-type ml.g5.48xlarge --instance-count 2 --hyperparameters hyperparameters/na_dual.json \\
        --channel train=s3://bucket/na/train/ --channel validation=s3://bucket/na/vali/ \\
        --output-path s3://bucket/out/ --spot --max-wait 432000 --checkpoint-s3-uri s3://bucket/ckpt/ [--dry-run]

Needs the optional extra `pip install 'tsa-training[launch]'` (`sagemaker>=2.257,<3`), or SDK v3
(`sagemaker>=3`, the `[sdk-v3]` extra): `launch` uses v3's `ModelTrainer` when v3 is installed (the
two cannot share an environment: v3 has no `Estimator`); neither is installed in the training image.
The generic `Estimator` sends each hyperparameter as `str(value)` (`True`, `0.0005`,
`OrderFeature`), v3 its JSON (`true`), which the job decodes by field type; the metric
definitions are the shipped `hyperparameters/metric_definitions.json`. Spot training sets
`max_wait` and `checkpoint_s3_uri` (SageMaker syncs it with /opt/ml/checkpoints, where the job
resumes from). `--dry-run` prints the CreateTrainingJob request and sends nothing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tsa.config import TUNING_OBJECTIVE
from tsa.contract import SHARDED_BY_S3_KEY, metric_definitions, read_json_object
from tsa.errors import JobError

DEFAULT_MAX_RUN = 5 * 24 * 3600  # the legacy production limit
TELEMETRY_OPT_OUT = 'SchemaVersion: "1.0"\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n'


@dataclass
class LaunchSpec:
    """Everything a training job needs from the user."""

    image_uri: str
    role: str
    hyperparameters: dict[str, Any]
    channels: dict[str, str]
    instance_type: str = "ml.g5.48xlarge"
    instance_count: int = 1
    output_path: str | None = None
    spot: bool = False
    max_run: int = DEFAULT_MAX_RUN
    max_wait: int | None = None
    checkpoint_s3_uri: str | None = None
    volume_size: int = 200
    input_mode: str = "File"
    sharded_channels: list[str] = field(default_factory=list)
    base_job_name: str = "tsa-training"
    environment: dict[str, str] = field(default_factory=dict)

    def inputs(self) -> dict[str, Any]:
        from sagemaker.inputs import TrainingInput

        return {
            name: TrainingInput(uri, distribution=SHARDED_BY_S3_KEY if name in self.sharded_channels
                                else "FullyReplicated", input_mode=self.input_mode)
            for name, uri in self.channels.items()
        }


def opt_out_of_telemetry() -> None:
    """SDK v2 sends usage telemetry from fit(); opt out through its config-file override."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2 is pinned on purpose (Estimator)
    if "SAGEMAKER_USER_CONFIG_OVERRIDE" not in os.environ:
        path = Path(tempfile.gettempdir()) / "tsa-sagemaker-config.yaml"
        path.write_text(TELEMETRY_OPT_OUT)
        os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(path)


def build_estimator(spec: LaunchSpec, session: Any = None) -> Any:
    """The SDK v2 `Estimator` for `spec` (nothing is sent until `.fit`)."""
    opt_out_of_telemetry()
    from sagemaker.estimator import Estimator

    spot = {}
    if spec.spot:
        spot = {"use_spot_instances": True, "max_wait": spec.max_wait or spec.max_run,
                "checkpoint_s3_uri": spec.checkpoint_s3_uri}
    return Estimator(
        image_uri=spec.image_uri,
        role=spec.role,
        instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        volume_size=spec.volume_size,
        max_run=spec.max_run,
        output_path=spec.output_path,
        base_job_name=spec.base_job_name,
        hyperparameters=spec.hyperparameters,
        metric_definitions=metric_definitions(),
        environment=spec.environment or None,
        sagemaker_session=session,
        disable_profiler=True,  # framework-container features: no use in this image
        debugger_hook_config=False,
        **spot,
    )


def local_session() -> Any:
    """A LocalSession for SDK local mode (Docker + docker-compose on this machine)."""
    opt_out_of_telemetry()
    from sagemaker.local import LocalSession

    session = LocalSession()
    session.config = {"local": {"local_code": True, "container_config": {"shm_size": "1g"}}}
    return session


def dry_run_session(region: str) -> tuple[Any, list[dict[str, Any]]]:
    """A real SDK session whose SageMaker client records its create requests instead of sending them.

    botocore skips the HTTP request when a `before-call` handler returns a response, so nothing
    leaves the machine and no credentials are needed. Recorded: CreateTrainingJob and
    CreateHyperParameterTuningJob.
    """
    import boto3
    import sagemaker

    captured: list[dict[str, Any]] = []
    client = boto3.Session(region_name=region).client("sagemaker")

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured.append(dict(params))

    for operation, arn_key, kind in (("CreateTrainingJob", "TrainingJobArn", "training-job"),
                                     ("CreateHyperParameterTuningJob", "HyperParameterTuningJobArn",
                                      "hyper-parameter-tuning-job")):
        arn = f"arn:aws:sagemaker:{region}:000000000000:{kind}/dry-run"
        client.meta.events.register(f"before-parameter-build.sagemaker.{operation}", capture)
        client.meta.events.register(
            f"before-call.sagemaker.{operation}",
            lambda arn=arn, arn_key=arn_key, **_: (SimpleNamespace(status_code=200, headers={}), {arn_key: arn}))
    session = sagemaker.Session(boto_session=boto3.Session(region_name=region), sagemaker_client=client)
    return session, captured


@dataclass
class TuningSpec:
    """A hyperparameter tuning job over the training job: ranges from a small JSON file (`read_tuning_file`)."""

    ranges: dict[str, dict[str, Any]]
    max_jobs: int = 10
    max_parallel_jobs: int = 2
    objective: str = TUNING_OBJECTIVE  # the selected model's AUC (`METRIC ... best_validation_auc=`)

    def parameter_ranges(self) -> dict[str, Any]:
        from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

        made: dict[str, Any] = {}
        for name, spec in self.ranges.items():
            if spec["type"] == "categorical":
                made[name] = CategoricalParameter(spec["values"])
            else:
                kind = ContinuousParameter if spec["type"] == "continuous" else IntegerParameter
                made[name] = kind(spec["min"], spec["max"], scaling_type=spec.get("scaling", "Auto"))
        return made


RANGE_KEYS = {"continuous": {"type", "min", "max", "scaling"}, "integer": {"type", "min", "max", "scaling"},
              "categorical": {"type", "values"}}


def read_tuning_file(path: Path, hyperparameters: dict[str, Any]) -> TuningSpec:
    """`{"max_jobs": 20, "max_parallel_jobs": 2, "ranges": {"scheduler_maxlr": {"type": "continuous",
    "min": 1e-4, "max": 1e-2, "scaling": "Logarithmic"}, "loss": {"type": "categorical", "values": [...]}}}`

    Every range is checked against the config before anything is sent: each end (each value) must
    give a valid job together with the fixed hyperparameters.
    """
    from tsa.config import JobConfig

    data = read_json_object(path, required=True) or {}
    unknown = sorted(set(data) - {"max_jobs", "max_parallel_jobs", "ranges", "objective"})
    if unknown or not isinstance(data.get("ranges"), dict) or not data["ranges"]:
        raise JobError(f"tuning file '{path}': expected the keys max_jobs, max_parallel_jobs, ranges (a non-empty "
                       f"object){f'; unknown {unknown}' if unknown else ''}")
    if data.get("objective", TUNING_OBJECTIVE) != TUNING_OBJECTIVE:
        raise JobError(f"tuning file '{path}': objective {data['objective']!r}: the job selects its model by "
                       f"{TUNING_OBJECTIVE!r}, tune on that")
    for name, spec in data["ranges"].items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in RANGE_KEYS or not set(spec) <= RANGE_KEYS[kind] or not set(spec) >= RANGE_KEYS[kind] - {
                "scaling"}:
            raise JobError(f"tuning file '{path}': range '{name}' = {spec!r}: expected type continuous or integer "
                           "with min, max (and scaling), or type categorical with values")
        for value in spec["values"] if kind == "categorical" else (spec["min"], spec["max"]):
            try:
                JobConfig.from_hyperparameters({**hyperparameters, name: value})
            except JobError as exc:
                raise JobError(f"tuning file '{path}': range '{name}' reaches {value!r}, which the job refuses: "
                               f"{exc.message}") from exc
    return TuningSpec(ranges=data["ranges"], max_jobs=int(data.get("max_jobs", 10)),
                      max_parallel_jobs=int(data.get("max_parallel_jobs", 2)))


def build_tuner(estimator: Any, tuning: TuningSpec) -> Any:
    from sagemaker.tuner import HyperparameterTuner

    return HyperparameterTuner(estimator, objective_metric_name=tuning.objective, objective_type="Maximize",
                               hyperparameter_ranges=tuning.parameter_ranges(), metric_definitions=metric_definitions(),
                               max_jobs=tuning.max_jobs, max_parallel_jobs=tuning.max_parallel_jobs)


def sdk_major_version() -> int:
    """The installed SageMaker Python SDK's major version (2: `Estimator`, 3: `ModelTrainer`)."""
    from importlib.metadata import version

    return int(version("sagemaker").split(".")[0])


def build_model_trainer(spec: LaunchSpec, session: Any = None) -> Any:
    """The SDK v3 `ModelTrainer` for `spec`: the same job as `build_estimator` (nothing sent until `.train`)."""
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import CheckpointConfig, Compute, OutputDataConfig, StoppingCondition

    trainer = ModelTrainer(
        training_image=spec.image_uri, role=spec.role, base_job_name=spec.base_job_name,
        compute=Compute(instance_type=spec.instance_type, instance_count=spec.instance_count,
                        volume_size_in_gb=spec.volume_size, enable_managed_spot_training=spec.spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=spec.max_run,
                                             max_wait_time_in_seconds=(spec.max_wait or spec.max_run) if spec.spot
                                             else None),
        output_data_config=OutputDataConfig(s3_output_path=spec.output_path) if spec.output_path else None,
        checkpoint_config=CheckpointConfig(s3_uri=spec.checkpoint_s3_uri) if spec.checkpoint_s3_uri else None,
        training_input_mode=spec.input_mode, hyperparameters=spec.hyperparameters,
        environment=spec.environment or {}, sagemaker_session=session,
    )
    return trainer.with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"])
                                            for d in metric_definitions()])


def v3_channels(spec: LaunchSpec) -> list[Any]:
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource

    return [Channel(channel_name=name, input_mode=spec.input_mode, data_source=DataSource(s3_data_source=S3DataSource(
        s3_data_type="S3Prefix", s3_uri=uri,
        s3_data_distribution_type=SHARDED_BY_S3_KEY if name in spec.sharded_channels else "FullyReplicated")))
        for name, uri in spec.channels.items()]


def dry_run_session_v3(region: str) -> tuple[Any, list[dict[str, Any]]]:
    """As `dry_run_session`, for SDK v3: its boto session answers CreateTrainingJob and the describe after it.

    Role validation (IAM policy simulation over the network) is switched off for the dry run only.
    """
    import datetime

    import boto3
    from sagemaker.core.helper.session_helper import Session

    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    captured: list[dict[str, Any]] = []
    boto = boto3.Session(region_name=region)
    ok = SimpleNamespace(status_code=200, headers={})
    arn = f"arn:aws:sagemaker:{region}:000000000000:training-job/dry-run"
    boto.events.register("before-parameter-build.sagemaker.CreateTrainingJob",
                         lambda params, **_: captured.append(dict(params)))
    boto.events.register("before-call.sagemaker.CreateTrainingJob", lambda **_: (ok, {"TrainingJobArn": arn}))
    boto.events.register("before-call.sagemaker.DescribeTrainingJob", lambda **_: (ok, {
        **captured[-1], "TrainingJobArn": arn, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting",
        "CreationTime": datetime.datetime.now(datetime.UTC)}))
    bucket = "dry-run-bucket"  # the SDK names a default bucket; a dry run never creates it
    return Session(boto_session=boto, default_bucket=bucket), captured


def launch(spec: LaunchSpec, region: str | None = None, dry_run: bool = False,
           tuning: TuningSpec | None = None) -> dict[str, Any] | str:
    """Start the job or tuning job (returns its name), or with `dry_run` return the request it would send.

    SDK v3 (`ModelTrainer`) when it is installed, else v2 (`Estimator`); tuning uses v2's tuner.
    """
    region = region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    if sdk_major_version() >= 3:
        if tuning is not None:
            raise JobError("--tune uses SDK v2's HyperparameterTuner: install 'sagemaker>=2.257,<3' for it")
        session, captured = dry_run_session_v3(region) if dry_run else (None, [])
        trainer = build_model_trainer(spec, session)
        trainer.train(input_data_config=v3_channels(spec), wait=False, logs=False)
        return captured[0] if dry_run else str(trainer._latest_training_job.training_job_name)
    session, captured = dry_run_session(region) if dry_run else (None, [])
    estimator = build_estimator(spec, session)
    if tuning is not None:
        tuner = build_tuner(estimator, tuning)
        tuner.fit(inputs=spec.inputs(), wait=False)
        return captured[0] if dry_run else str(tuner.latest_tuning_job.name)
    estimator.fit(inputs=spec.inputs(), wait=False, logs=False)
    return captured[0] if dry_run else str(estimator.latest_training_job.name)

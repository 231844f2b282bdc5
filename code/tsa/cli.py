"""The `tsa` console command (also `python -m tsa`).

    tsa train                      # the SageMaker job (docker run IMAGE train)
    tsa validate [JOB_DIR | FILE]  # validate a job folder or a hyperparameters file; print the config
    tsa schema                     # JSON schema of the hyperparameters
    tsa legacy import W.pt --hyperparameters HP.json --output-dir DIR   # legacy weights -> ours
    tsa legacy export DIR --output W.pt                                 # ours -> legacy keys
    tsa data synth --hyperparameters HP.json --output DIR [--format npy|parquet]
    tsa data convert SRC DST --to parquet|npy
    tsa launch --image-uri URI --role ARN --hyperparameters HP.json --channel train=s3://... [--dry-run]

Never named `train`: sagemaker-training installs a console script of that name, and SageMaker
starts the image as `docker run IMAGE train`, so `train` is our first argument instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from tsa import config as config_module
from tsa.contract import JobPaths, load_hyperparameter_file, read_channels, read_json_object
from tsa.entrypoint import load_job_config, main_train, validate_job_data
from tsa.errors import STOPPED_EXIT_CODE, JobError
from tsa.training import left_work_behind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsa", description="Temporal Self-Attention training container.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run the training job under /opt/ml (or $SAGEMAKER_BASE_DIR)")
    train.add_argument("--base-dir", type=Path, help="job folder instead of /opt/ml / $SAGEMAKER_BASE_DIR")
    train.set_defaults(handler=_cmd_train)

    serve = commands.add_parser("serve", help="the SageMaker hosting endpoint: /ping, /invocations on port 8080")
    serve.add_argument("--model-dir", help="default $SM_MODEL_DIR or /opt/ml/model")
    serve.add_argument("--port", type=int, help="default $SAGEMAKER_BIND_TO_PORT or 8080")
    serve.set_defaults(handler=_cmd_serve)

    validate = commands.add_parser("validate", help="validate a job folder or a hyperparameters JSON file")
    validate.add_argument("target", nargs="?", type=Path, help="job folder (with input/config) or JSON file")
    validate.set_defaults(handler=_cmd_validate)

    schema = commands.add_parser("schema", help="print the JSON schema of the hyperparameters")
    schema.set_defaults(handler=_cmd_schema)

    legacy = commands.add_parser("legacy", help="legacy-keyed weights in and out")
    legacy_commands = legacy.add_subparsers(dest="legacy_command", required=True)
    imp = legacy_commands.add_parser("import", help="legacy .pt -> model.safetensors + config.json")
    imp.add_argument("weights", type=Path, help="legacy state dict or checkpoint (.pt)")
    imp.add_argument("--hyperparameters", type=Path, required=True, help="hyperparameters JSON of that model")
    imp.add_argument("--output-dir", type=Path, required=True)
    imp.set_defaults(handler=_cmd_legacy_import)
    exp = legacy_commands.add_parser("export", help="model.safetensors + config.json -> legacy-keyed .pt")
    exp.add_argument("weights_dir", type=Path, help="folder with model.safetensors and config.json")
    exp.add_argument("--output", type=Path, required=True)
    exp.set_defaults(handler=_cmd_legacy_export)

    data = commands.add_parser("data", help="synthetic data and format conversion")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="write a synthetic dataset with a planted temporal signal")
    synth.add_argument("--hyperparameters", type=Path, required=True, help="hyperparameters JSON (shapes)")
    synth.add_argument("--output", type=Path, required=True, help="folder that gets one subfolder per channel")
    synth.add_argument("--format", choices=["npy", "parquet"], default="npy")
    synth.add_argument("--rows", default="train=4000,validation=1000,calibration=1000",
                       help="rows per channel, e.g. train=4000,validation=1000,calibration=1000,test=1000")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_cmd_data_synth)
    convert = data_commands.add_parser("convert", help="convert a channel folder between npy and Parquet")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path)
    convert.add_argument("--to", choices=["npy", "parquet"], required=True)
    convert.add_argument("--data-version", default=None, help="npy file suffix (default: the one present / v0)")
    convert.add_argument("--split", default=None, help="npy file prefix (default: the one present / target name)")
    convert.add_argument("--row-group-rows", type=int, default=None)
    convert.add_argument("--compression", default="none", help="Parquet codec: none, snappy, zstd, ...")
    convert.set_defaults(handler=_cmd_data_convert)

    launch = commands.add_parser("launch", help="start a SageMaker training job (needs the [launch] extra)")
    launch.add_argument("--image-uri", required=True)
    launch.add_argument("--role", required=True, help="SageMaker execution role ARN")
    launch.add_argument("--hyperparameters", type=Path, required=True)
    launch.add_argument("--channel", action="append", required=True, metavar="NAME=URI",
                        help="repeatable: train=s3://..., validation=s3://..., calibration=..., test=...")
    launch.add_argument("--instance-type", default="ml.g5.48xlarge")
    launch.add_argument("--instance-count", type=int, default=1)
    launch.add_argument("--output-path", help="S3 prefix for model.tar.gz (default: the session's bucket)")
    launch.add_argument("--spot", action="store_true", help="managed spot training (needs --checkpoint-s3-uri)")
    launch.add_argument("--max-run", type=int, default=5 * 24 * 3600, help="seconds")
    launch.add_argument("--max-wait", type=int, help="seconds, >= max-run (spot)")
    launch.add_argument("--checkpoint-s3-uri")
    launch.add_argument("--input-mode", choices=["File", "FastFile"], default="File")
    launch.add_argument("--sharded", action="append", default=[], metavar="CHANNEL",
                        help="channel to distribute ShardedByS3Key (default FullyReplicated)")
    launch.add_argument("--region")
    launch.add_argument("--tune", type=Path, metavar="RANGES.json",
                        help="a hyperparameter tuning job over these ranges, objective validation:best_auc")
    launch.add_argument("--dry-run", action="store_true",
                        help="print the CreateTrainingJob (or tuning) request, send nothing")
    launch.set_defaults(handler=_cmd_launch)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    code = main_train(args.base_dir)
    # The outcome is written: a later SIGTERM must not turn it into a kill while the interpreter shuts down
    # (its finalisation puts the default handler back, and tearing torch down takes a while).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code == STOPPED_EXIT_CODE or left_work_behind():
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown of torch and Lightning (about 1 s, measured): a stop is
    answered within seconds. Every file is closed by then; the logs are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_validate(args: argparse.Namespace) -> int:
    target: Path | None = args.target
    if target is not None and target.is_file():
        config = _read_config_file(target)
    else:
        paths = JobPaths.from_root(target)
        config = load_job_config(paths)
        validate_job_data(config, read_channels(paths))
    print(json.dumps(config.resolved(), indent=2, sort_keys=True))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_module.json_schema(), indent=2))
    return 0


def _read_config_file(path: Path) -> config_module.JobConfig:
    """The validated config of a hyperparameters file, read as the job reads its own."""
    return config_module.JobConfig.from_hyperparameters(load_hyperparameter_file(path))


def _cmd_legacy_import(args: argparse.Namespace) -> int:
    from tsa.legacy import import_legacy

    import_legacy(args.weights, _read_config_file(args.hyperparameters), args.output_dir)
    print(f"wrote {args.output_dir}")
    return 0


def _cmd_legacy_export(args: argparse.Namespace) -> int:
    from tsa.legacy import export_legacy

    export_legacy(args.weights_dir, args.output)
    print(f"wrote {args.output}")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from tsa.data.convert import write_npy_channel, write_parquet_channel
    from tsa.data.synth import generate

    config = _read_config_file(args.hyperparameters)
    try:
        rows = {channel: int(count) for channel, count in (item.split("=") for item in args.rows.split(","))}
    except ValueError as exc:
        raise JobError(f"--rows {args.rows!r}: expected channel=count pairs, e.g. train=4000,validation=1000") from exc
    for index, (channel, count) in enumerate(rows.items()):
        arrays = generate(config.model, count, seed=args.seed + index)
        folder = args.output / channel
        if args.format == "npy":
            write_npy_channel(folder, channel, config.data.data_version, arrays)
        else:
            write_parquet_channel(folder, arrays, ids=np.arange(count).astype(str))
        print(f"wrote {folder} ({count} examples, {args.format})")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from tsa.data.convert import npy_to_parquet, parquet_to_npy

    if args.to == "parquet":
        npy_to_parquet(args.source, args.target, args.data_version, args.split, args.row_group_rows,
                       args.compression)
    else:
        parquet_to_npy(args.source, args.target, args.split or args.target.name, args.data_version or "v0")
    print(f"wrote {args.target}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from tsa.logs import configure_logging
    from tsa.serving.server import serve

    configure_logging()
    _exit_now(serve(model_dir=args.model_dir, port=args.port))


def _cmd_launch(args: argparse.Namespace) -> int:
    from tsa.launch import LaunchSpec, launch, read_tuning_file

    config = _read_config_file(args.hyperparameters)  # refuse an invalid job before talking to AWS
    raw = read_json_object(args.hyperparameters, required=True) or {}  # sent as written: the job resolves config_file
    if args.spot and not args.checkpoint_s3_uri:
        raise JobError("--spot needs --checkpoint-s3-uri: a spot job resumes from its checkpoints")
    if args.max_wait is not None and args.max_wait < args.max_run:
        raise JobError(f"--max-wait {args.max_wait} is below --max-run {args.max_run}: SageMaker requires >=")
    spec = LaunchSpec(
        image_uri=args.image_uri, role=args.role, hyperparameters=config_module.typed_hyperparameters(raw, config),
        channels=dict(item.split("=", 1) for item in args.channel), instance_type=args.instance_type,
        instance_count=args.instance_count, output_path=args.output_path, spot=args.spot, max_run=args.max_run,
        max_wait=args.max_wait, checkpoint_s3_uri=args.checkpoint_s3_uri, input_mode=args.input_mode,
        sharded_channels=args.sharded,
    )
    tuning = read_tuning_file(args.tune, raw) if args.tune else None
    result = launch(spec, region=args.region, dry_run=args.dry_run, tuning=tuning)
    kind = "tuning job" if tuning else "training job"
    print(json.dumps(result, indent=2, default=str) if args.dry_run else f"started {kind} {result}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a user error (`JobError`) is one line on stderr and exit code 2.

    `tsa train` handles its own errors (failure file, exit codes) in the entrypoint.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except JobError as exc:
        print(f"tsa {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

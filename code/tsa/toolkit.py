"""The SageMaker training toolkit (`sagemaker-training`): script mode and the `SM_*` environment.

What the toolkit does better than code here, it does:
- **script mode**: when the hyperparameters name `sagemaker_program`, `tsa train` hands the job to
  the toolkit's own trainer, as the PyTorch framework images do: it fetches the code from
  `sagemaker_submit_directory`, installs its `requirements.txt`, runs the entry point with the
  hyperparameters as command-line arguments and the `SM_*` variables set, and writes the failure
  file and exit code as the toolkit defines them. The user's script can import `tsa` and call
  `tsa.api.train` for the built-in job between its own steps.
- **the `SM_*` variables** (`SM_MODEL_DIR`, `SM_CHANNEL_<NAME>`, `SM_HPS`, `SM_NUM_GPUS`,
  `SM_HOSTS`, ...) for `tsa train` too, derived by the toolkit's `Environment` from what
  `contract.py` read and validated.

`contract.py` stays the reader of `/opt/ml`: it refuses what the toolkit accepts silently
(duplicate JSON keys, duplicate hosts, Pipe mode, unknown channel aliases) and names the file;
the toolkit complements it with the environment a SageMaker user expects. Without
`sagemaker_program` the job's own error policy, failure file and SIGTERM handling apply
(`entrypoint.py`): the toolkit's trainer writes tracebacks into the failure file and does not
forward SIGTERM to the process it runs, so in script mode `tsa` (PID 1) forwards it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from types import FrameType
from typing import Any

from tsa.contract import (
    BASE_DIR_ENV,
    Channel,
    JobPaths,
    ResourceConfig,
    check_writable,
    read_resource_config,
)
from tsa.errors import ConfigError

log = logging.getLogger("tsa")

SCRIPT_MODE_KEY = "sagemaker_program"


def script_mode_requested(paths: JobPaths) -> bool:
    """Whether `hyperparameters.json` names a user entry point (unreadable files: no; the job reports them)."""
    try:
        raw = json.loads(paths.hyperparameters_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and bool(raw.get(SCRIPT_MODE_KEY))


def _toolkit_environment_module(paths: JobPaths) -> Any:
    """`sagemaker_training.environment`, its paths computed for `paths.root`.

    The toolkit computes its paths from `$SAGEMAKER_BASE_DIR` when the module is imported (and
    creates a job tree under the home folder when `/opt/ml` is absent), so the variable is set
    first, and the module is imported again when an earlier import saw another root.
    """
    os.environ[BASE_DIR_ENV] = str(paths.root)
    from sagemaker_training import environment

    if os.path.abspath(environment.base_dir) != os.path.abspath(paths.root):
        environment = importlib.reload(environment)
    return environment


def sm_environment(paths: JobPaths, resources: ResourceConfig, channels: Mapping[str, Channel],
                   hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """The `SM_*` variables of this job, as the toolkit derives them from the validated contract."""
    environment = _toolkit_environment_module(paths)
    # The validated file as it is (instance type and groups included), else the one-host default.
    resource_config = dict(resources.raw) if resources.raw else {"current_host": resources.current_host,
                                                                 "hosts": list(resources.hosts)}
    input_data_config = {name: {"TrainingInputMode": channel.input_mode,
                                "S3DistributionType": channel.distribution} for name, channel in channels.items()}
    env = environment.Environment(resource_config=resource_config, input_data_config=input_data_config,
                                  hyperparameters=dict(hyperparameters))
    variables = env.to_env_vars()
    for name, channel in channels.items():  # our channel names are canonical; folders may be aliases (`vali`)
        variables[f"SM_CHANNEL_{name.upper()}"] = str(channel.path)
    return {key: str(value) for key, value in variables.items()}


def export_sm_environment(paths: JobPaths, resources: ResourceConfig, channels: Mapping[str, Channel],
                          hyperparameters: Mapping[str, Any]) -> None:
    """Set the `SM_*` variables for this process and the ranks it starts (values already set win)."""
    try:
        variables = sm_environment(paths, resources, channels, hyperparameters)
    except Exception as exc:  # the job does not depend on them: say so and go on
        log.warning("the SM_* variables are not set: the toolkit could not derive them (%s)", exc)
        return
    for key, value in variables.items():
        os.environ.setdefault(key, value)
    log.info("SM_* environment: %d variables (SM_MODEL_DIR=%s, SM_NUM_GPUS=%s, SM_HOSTS=%s)", len(variables),
             os.environ.get("SM_MODEL_DIR"), os.environ.get("SM_NUM_GPUS"), os.environ.get("SM_HOSTS"))


def _forward_sigterm(signum: int, frame: FrameType | None) -> None:
    """PID 1 ignores an unhandled SIGTERM: pass it on to the user's script (and whatever it started)."""
    import psutil

    log.warning("SIGTERM received: forwarding it to the user's entry point")
    for child in psutil.Process().children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.Error:
            pass


def check_script_mode_contract(paths: JobPaths) -> None:
    """What the toolkit's trainer needs and does not check itself, checked by the job's own readers.

    The toolkit reads all three config files and writes into `output/`; a missing one makes its
    trainer fail while writing the failure file and exit 0. SageMaker always writes the three.
    """
    missing = [path.name for path in (paths.inputdataconfig_file, paths.resourceconfig_file) if not path.is_file()]
    if missing:
        raise ConfigError([f"script mode ('{SCRIPT_MODE_KEY}' is set) needs {' and '.join(missing)} in "
                           f"'{paths.config_dir}', as SageMaker writes them: add them (local_mode/run.py does)"])
    read_resource_config(paths)  # the user's channels are the script's business: any names
    check_writable(paths.output_dir, "output folder")


def run_script_mode(paths: JobPaths) -> int:
    """Run the user's entry point through the toolkit's trainer; returns its exit code."""
    _toolkit_environment_module(paths)
    from sagemaker_training import trainer

    signal.signal(signal.SIGTERM, _forward_sigterm)
    log.info("script mode: %s names the entry point; the SageMaker training toolkit runs it",
             paths.hyperparameters_file)
    try:
        trainer.train()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    if code == 0 and not paths.success_file.exists():
        log.error("the toolkit's trainer ended without reporting success (%s is missing)", paths.success_file)
        return 1
    return code

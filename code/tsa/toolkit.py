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

**The estimator's `distribution` in script mode**: the runner is chosen here, as the PyTorch
framework images choose it (their `SAGEMAKER_TRAINING_MODULE`, here `run_entry_point`), from the
hyperparameters the SDK writes. `torch_distributed` runs the entry point under `torchrun` through
the toolkit's own `TorchDistributedRunner` (one process per visible GPU, else `cpu_processes` per
host; `--master_addr <first host> --master_port 7777` across hosts); no distribution runs one
process per host. Every other option needs MPI, sshd or SageMaker's distributed libraries, which
this image does not have: it is refused before anything starts (exit 2, our failure file).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from tsa.config import RuntimeConfig, decode_value
from tsa.contract import (
    BASE_DIR_ENV,
    Channel,
    JobPaths,
    ResourceConfig,
    check_writable,
    read_json_object,
    read_resource_config,
)
from tsa.errors import STOPPED_EXIT_CODE, ConfigError
from tsa.training.stop import wait_in_thread
from tsa.training.world import visible_gpus

log = logging.getLogger("tsa")

SCRIPT_MODE_KEY = "sagemaker_program"
FRAMEWORK_MODULE_ENV = "SAGEMAKER_TRAINING_MODULE"  # the toolkit's trainer calls this `module:function`
FRAMEWORK_ENTRY = "tsa.toolkit:run_entry_point"
TORCH_DISTRIBUTED_KEY = "sagemaker_torch_distributed_enabled"  # distribution={"torch_distributed": {"enabled": True}}
# Script-mode hyperparameters read under torch_distributed (validated by the job's `RuntimeConfig` fields).
TORCHRUN_SETTINGS = {"cpu_processes": "processes per host when no GPU is visible",
                     "rendezvous_timeout_s": "seconds to wait for every host to join (its static rendezvous)"}
RENDEZVOUS_ENV = "PET_RDZV_CONF"  # torchrun reads `--rdzv-conf` from it: its static rendezvous' timeout
# After a SIGTERM torchrun gives its workers this long before SIGKILL (its default, 30 s, would cut a
# checkpoint short): most of the 120 s SageMaker waits before it kills the container.
SHUTDOWN_ENV, SHUTDOWN_GRACE_S = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 100
# One host: torchrun's local rendezvous would advertise this host's name, and wait without end where
# it does not resolve (`docker run --network none`); the loopback address always does.
LOCAL_ADDR_ENV, ONE_HOST_ADDR = "PET_LOCAL_ADDR", "127.0.0.1"
SUPPORTED_DISTRIBUTION = "use distribution={'torch_distributed': {'enabled': True}}, or no distribution"
# The estimators' other `distribution` options, by the hyperparameter each one writes (SDK v2), in the
# order a failure file names them: they need MPI, sshd, SageMaker's smddp/smp libraries or XLA, none
# of which this image has.
UNSUPPORTED_DISTRIBUTIONS = {
    "mp_parameters": "distribution={'smdistributed': {'modelparallel': ...}}",
    "sagemaker_distributed_dataparallel_enabled": "distribution={'smdistributed': {'dataparallel': ...}}, which the "
                                                  "PyTorch estimator also makes of {'pytorchddp': ...}",
    "sagemaker_pytorch_ddp_enabled": "distribution={'pytorchddp': ...}",
    "sagemaker_mpi_enabled": "distribution={'mpi': ...}",
    "sagemaker_pytorch_xla_multi_worker_enabled": "distribution={'pytorchxla': ...}",
    "sagemaker_parameter_server_enabled": "distribution={'parameter_server': ...}",
    "sagemaker_multi_worker_mirrored_strategy_enabled": "distribution={'multi_worker_mirrored_strategy': ...}",
}


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
    """Set the `SM_*` variables for this process and the ranks it starts.

    The files SageMaker writes are the source of truth (the job itself reads them, never these
    variables): a variable already set to something else is overwritten, with a warning naming both.
    """
    try:
        variables = sm_environment(paths, resources, channels, hyperparameters)
    except Exception as exc:  # the job does not depend on them: say so and go on
        log.warning("the SM_* variables are not set: the toolkit could not derive them (%s)", exc)
        return
    for key, value in variables.items():
        previous = os.environ.get(key)
        if previous is not None and previous != value:
            log.warning("%s=%r in the environment contradicts the job's config files (%r): the files win", key,
                        previous, value)
        os.environ[key] = value
    log.info("SM_* environment: %d variables (SM_MODEL_DIR=%s, SM_NUM_GPUS=%s, SM_HOSTS=%s)", len(variables),
             os.environ.get("SM_MODEL_DIR"), os.environ.get("SM_NUM_GPUS"), os.environ.get("SM_HOSTS"))


def _forward_sigterm(paths: JobPaths, signum: int, frame: FrameType | None) -> None:
    """PID 1 ignores an unhandled SIGTERM: pass it on to the user's script (and whatever it started).

    Under torchrun that is torchrun and its workers; torchrun sends it to the workers too and waits
    `SHUTDOWN_GRACE_S` for them, so a worker's handler may run twice. Before the script runs (the
    toolkit fetching the code, installing requirements) there is nothing to forward to and the
    toolkit would carry on: the job writes its stop notice and exits 143 at once.
    """
    import psutil

    children = psutil.Process().children(recursive=True)
    if not children:
        log.warning("SIGTERM received before the user's entry point started: stopping")
        _write_stop_notice(paths)
        logging.shutdown()
        os._exit(STOPPED_EXIT_CODE)
    log.warning("SIGTERM received: forwarding it to the user's entry point")
    SCRIPT.stop_forwarded = True
    for child in children:
        try:
            child.send_signal(signum)
        except psutil.Error:
            pass


def _write_stop_notice(paths: JobPaths) -> None:
    try:
        paths.failure_file.write_text("training stopped by SIGTERM before the user's entry point started "
                                      "(the toolkit was fetching or installing its code): run the job again\n")
    except OSError as exc:
        log.error("cannot write %s (%s)", paths.failure_file, exc.strerror or exc)


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
    hyperparameters = read_json_object(paths.hyperparameters_file, required=True) or {}
    script_launch(hyperparameters)
    check_writable(paths.output_dir, "output folder")
    check_entry_point(paths, hyperparameters)


SUBMIT_KEY = "sagemaker_submit_directory"
S3_CHECK_TIMEOUT_S = 60  # the toolkit's own download has boto3's defaults: minutes on a dead endpoint


def check_entry_point(paths: JobPaths, hyperparameters: Mapping[str, Any]) -> None:
    """The entry point can be found before the toolkit looks for it (it waits or dies with a traceback).

    The toolkit takes the code from `code/` when that folder holds anything, else from
    `sagemaker_submit_directory`: a local folder, a tar file or an `s3://` tar file, which must
    answer within `S3_CHECK_TIMEOUT_S` (bounded connections, SIGTERM honoured while it waits).
    """
    program = str(decode_value(str, hyperparameters[SCRIPT_MODE_KEY]))
    code_dir = paths.root / "code"
    if code_dir.is_dir() and any(code_dir.iterdir()):
        if not (code_dir / program).exists():
            raise ConfigError([f"hyperparameter '{SCRIPT_MODE_KEY}' = '{program}': no such file in '{code_dir}', "
                               "where the job's code is: name a file of the code the estimator uploaded"])
        return
    if SUBMIT_KEY not in hyperparameters:
        raise ConfigError([f"hyperparameter '{SUBMIT_KEY}' is missing and '{code_dir}' is empty: the entry point "
                           f"'{program}' has nowhere to come from; give the estimator source_dir (or entry_point)"])
    source = str(decode_value(str, hyperparameters[SUBMIT_KEY]))
    if source.startswith("s3://"):
        region = hyperparameters.get("sagemaker_region")
        _check_s3_object(source, str(decode_value(str, region)) if region else None)
    elif Path(source).is_dir():
        if not (Path(source) / program).exists():
            raise ConfigError([f"hyperparameter '{SCRIPT_MODE_KEY}' = '{program}': no such file in "
                               f"'{SUBMIT_KEY}' '{source}': name a file of that folder"])
    elif not Path(source).is_file():
        raise ConfigError([f"hyperparameter '{SUBMIT_KEY}' = '{source}': no such folder or file: give an s3:// "
                           "URI, a folder or a .tar.gz of the code"])


def _check_s3_object(uri: str, region: str | None) -> None:
    """`uri` answers a HEAD request within `S3_CHECK_TIMEOUT_S`, else a `ConfigError` naming it."""
    errors: list[str] = []

    def head() -> None:
        try:
            import boto3
            from botocore.config import Config

            bucket, _, key = uri[len("s3://"):].partition("/")
            config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
            boto3.client("s3", region_name=region, config=config).head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # credentials, endpoint, permissions, a missing object: all named below
            errors.append(f"{type(exc).__name__}: {exc}")

    answered = wait_in_thread(head, S3_CHECK_TIMEOUT_S, f"while checking '{SUBMIT_KEY}' {uri}")
    error = (errors[0] if errors else None) if answered else f"no answer within {S3_CHECK_TIMEOUT_S} s"
    if error is not None:
        raise ConfigError([f"hyperparameter '{SUBMIT_KEY}' = '{uri}' cannot be read ({error}): the entry point's "
                           "code is not there or S3 does not answer; check the URI, the credentials and the network"])


@dataclass(frozen=True)
class ScriptLaunch:
    """How script mode starts the user's entry point: one plain process per host, or torchrun."""

    torchrun: bool
    cpu_processes: int  # torchrun's processes per host when no GPU is visible
    rendezvous_timeout_s: int  # how long torchrun waits for every host to join

    def processes_per_host(self) -> int:
        """One per visible GPU (as the job's own world counts them), else `cpu_processes`."""
        gpus = visible_gpus()
        return gpus if gpus > 0 else self.cpu_processes


def _switch(value: Any) -> bool | None:
    """A distribution flag as the SDK writes it ('true' / 'false'); None for anything else."""
    text = str(decode_value(str, value)).strip().lower()
    return {"true": True, "1": True, "false": False, "0": False, "": False}.get(text)


SCRIPT_RUNS = "it runs the entry point as one process per host or under torchrun"
BUILT_IN_RUNS = "the built-in job trains with PyTorch DDP on every GPU of every host by itself"


def _refused_distribution(key: str, value: Any, runs: str = SCRIPT_RUNS) -> str | None:
    """The problem with an unsupported distribution hyperparameter (`runs`: what the job does instead);
    None when it is off."""
    if key == "mp_parameters":  # model-parallel settings: the SDK writes them only when modelparallel is enabled
        enabled = str(decode_value(str, value)).strip() not in ("", "{}", "null")
    else:
        enabled = _switch(value) is not False  # a value that is not true/false is refused too
    if not enabled:
        return None
    return (f"hyperparameter '{key}' = {value!r} ({UNSUPPORTED_DISTRIBUTIONS[key]}) is not supported by this image: "
            f"{runs}, and has no MPI, sshd or SageMaker distributed libraries; {SUPPORTED_DISTRIBUTION}")


def check_built_in_distribution(hyperparameters: Mapping[str, Any]) -> None:
    """`tsa train` (no entry point) trains on every GPU of every host itself: `torch_distributed` asks for what
    it does anyway; any other distribution is refused rather than silently ignored."""
    problems = [problem for key in UNSUPPORTED_DISTRIBUTIONS if key in hyperparameters
                if (problem := _refused_distribution(key, hyperparameters[key], BUILT_IN_RUNS)) is not None]
    if problems:
        raise ConfigError(problems)


def _torchrun_runtime(hyperparameters: Mapping[str, Any]) -> tuple[RuntimeConfig, list[str]]:
    """`cpu_processes` and `rendezvous_timeout_s` as `tsa train` allows them, or the problems with them."""
    given = {key: decode_value(int, hyperparameters[key]) for key in TORCHRUN_SETTINGS if key in hyperparameters}
    try:
        return RuntimeConfig(**given), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0])
            problems.append(f"hyperparameter '{key}' = {hyperparameters[key]!r} is not allowed with "
                            f"distribution={{'torch_distributed': ...}} ({error['msg']}): it is torchrun's "
                            f"{TORCHRUN_SETTINGS[key]}; fix it or leave it out")
        return RuntimeConfig(), problems


def script_launch(hyperparameters: Mapping[str, Any]) -> ScriptLaunch:
    """The launch the hyperparameters ask for; every problem at once in a `ConfigError`.

    `cpu_processes` and `rendezvous_timeout_s` are validated by the job's own `RuntimeConfig`
    fields, so script mode allows exactly what `tsa train` allows.
    """
    problems = [problem for key in UNSUPPORTED_DISTRIBUTIONS if key in hyperparameters
                if (problem := _refused_distribution(key, hyperparameters[key])) is not None]
    torchrun = _switch(hyperparameters.get(TORCH_DISTRIBUTED_KEY, "false"))
    if torchrun is None:
        problems.append(f"hyperparameter '{TORCH_DISTRIBUTED_KEY}' = {hyperparameters[TORCH_DISTRIBUTED_KEY]!r}: "
                        "expected true or false (the SDK writes it for distribution={'torch_distributed': "
                        "{'enabled': ...}})")
    runtime, setting_problems = _torchrun_runtime(hyperparameters) if torchrun else (RuntimeConfig(), [])
    problems += setting_problems
    if problems:
        raise ConfigError(problems)
    return ScriptLaunch(torchrun=bool(torchrun), cpu_processes=runtime.cpu_processes,
                        rendezvous_timeout_s=runtime.rendezvous_timeout_s)


def read_script_launch(paths: JobPaths) -> ScriptLaunch:
    """`script_launch` of the job's `hyperparameters.json`."""
    hyperparameters = read_json_object(paths.hyperparameters_file, required=True)
    assert hyperparameters is not None
    return script_launch(hyperparameters)


@dataclass
class ScriptOutcome:
    """What this process learnt of the user's entry point: it is run in this process's trainer call."""

    failure: str = ""  # the failure file's first line, once the script failed
    ended: str = "an error"  # how it ended, for a stop notice
    stop_forwarded: bool = False


SCRIPT = ScriptOutcome()
TAIL_BYTES = 64 * 1024
SUMMARY_CHARS = 600


class OutputTail:
    """A file descriptor (1 or 2) through a pipe while the user's script runs: every byte passes on
    unchanged (whole lines stay whole, unlike the toolkit's chunked capture), the last
    `TAIL_BYTES` are kept for the failure file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.tail = bytearray()

    def __enter__(self) -> OutputTail:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved = os.dup(self.fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, self.fd)
        os.close(write_end)
        self._reader = threading.Thread(target=self._pass_on, args=(read_end,), name=f"tail-{self.fd}", daemon=True)
        self._reader.start()
        return self

    def _pass_on(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                os.write(self._saved, chunk)
                self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def __exit__(self, *exc_info: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(self._saved, self.fd)  # this process's end of the pipe closes
        # A process the script left running may keep the pipe open and write on: the reader passes it
        # on (the saved descriptor stays open for it), and the wait for it is bounded.
        self._reader.join(timeout=1.0)

    def text(self) -> str:
        return bytes(self.tail).decode("utf-8", errors="replace")


# An exception line: a dotted name, then ': message'. torchrun's summary of a failed worker
# (ChildFailedError) is passed over for the worker's own traceback, printed before it.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: ")
WRAPPERS = ("ChildFailedError",)


def last_exception(output: str) -> str | None:
    """The exception line of the last Python traceback in `output`, its frames indented or (as the
    toolkit prints torchrun's output) not."""
    lines = [line.strip() for line in output.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    for start in reversed(starts):
        found = next((line for line in lines[start + 1:] if EXCEPTION_LINE.match(line)), None)
        if found and not any(wrapper in found.split(":")[0] for wrapper in WRAPPERS):
            return found[:SUMMARY_CHARS]
    return None


def error_summary(stderr: str, stdout: str) -> str:
    """The script's own error: its last traceback's exception (on stderr, else on stdout, where the
    toolkit prints torchrun's output), else its last stderr line."""
    found = last_exception(stderr) or last_exception(stdout)
    if found:
        return found
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return last[:SUMMARY_CHARS] or "it wrote nothing to stderr"


def _ending(return_code: str) -> str:
    """'exit code 3' or 'signal SIGTERM' (a negative code: the signal that ended it)."""
    try:
        number = int(return_code)
    except ValueError:
        return f"exit code {return_code}"
    if number < 0:
        try:
            return f"signal {signal.Signals(-number).name}"
        except ValueError:
            return f"signal {-number}"
    return f"exit code {number}"


@contextlib.contextmanager
def script_failure_summarised(entry_point_name: str) -> Iterator[None]:
    """Run the user's script with its output's tail kept; a failure names the script and its own error,
    in the toolkit's error (its `ErrorMessage`) and in `SCRIPT.failure` (the failure file's first line)."""
    from sagemaker_training import errors

    failed: errors.ExecuteUserScriptError | None = None
    with OutputTail(1) as stdout, OutputTail(2) as stderr:
        try:
            yield
        except errors.ExecuteUserScriptError as exc:
            failed = exc
    if failed is None:  # read once the tails are closed: all the script wrote has passed through them
        return
    captured = failed.output.decode("utf-8", "replace") if isinstance(failed.output, bytes) else failed.output
    summary = error_summary(stderr.text() or captured or "", stdout.text())
    SCRIPT.ended = _ending(failed.return_code)
    SCRIPT.failure = f"the entry point '{entry_point_name}' failed with {SCRIPT.ended}: {summary}"
    raise errors.ExecuteUserScriptError(failed.cmd, failed.return_code, summary, failed.extra_info) from failed


def _torchrun_of_this_interpreter_first() -> None:
    """The toolkit runs `torchrun` by name: make it the one installed with this interpreter's torch.

    The image has its venv on PATH already; a venv that is not activated (tests, local runs) does not.
    """
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "torchrun").is_file():
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])


def run_entry_point() -> None:
    """The toolkit trainer's framework entry (`SAGEMAKER_TRAINING_MODULE`): the user's entry point, run
    by the toolkit's runner for the estimator's `distribution`.

    As in the PyTorch framework images, torchrun runs only on the hosts of the distribution's instance
    groups (all hosts unless the estimator names groups); the others run the entry point plainly.
    """
    from sagemaker_training import entry_point, environment, params, runner

    env = environment.Environment()
    launch = read_script_launch(JobPaths.from_root(environment.base_dir))
    if not (launch.torchrun and env.current_instance_group in env.distribution_instance_groups):
        # capture_error stays False: with True the toolkit reads the script's output in chunks and splits
        # lines at chunk ends (an unbuffered print of several arguments lands on several lines).
        with script_failure_summarised(env.user_entry_point):
            entry_point.run(env.module_dir, env.user_entry_point, env.to_cmd_args(), env.to_env_vars())
        return
    processes = launch.processes_per_host()
    log.info("distribution torch_distributed: torchrun with %d process(es) per host on %d host(s), rendezvous "
             "timeout %d s", processes, len(env.distribution_hosts), launch.rendezvous_timeout_s)
    os.environ.setdefault(RENDEZVOUS_ENV, f"timeout={launch.rendezvous_timeout_s}")
    os.environ.setdefault(SHUTDOWN_ENV, str(SHUTDOWN_GRACE_S))
    if len(env.distribution_hosts) == 1:
        os.environ.setdefault(LOCAL_ADDR_ENV, ONE_HOST_ADDR)
    _torchrun_of_this_interpreter_first()
    # capture_error=True, as the PyTorch images pass it: the toolkit's TorchDistributedRunner.run takes
    # (capture_error, wait) in the opposite order to entry_point.run's call, so with False it would not
    # wait for torchrun's exit code and a failed job would report success.
    with script_failure_summarised(env.user_entry_point):
        entry_point.run(env.module_dir, env.user_entry_point, env.to_cmd_args(), env.to_env_vars(),
                        capture_error=True, runner_type=runner.TorchDistributedRunnerType,
                        extra_opts={params.MPI_PROCESSES_PER_HOST: processes})


def run_script_mode(paths: JobPaths) -> int:
    """Run the user's entry point through the toolkit's trainer; returns its exit code.

    The trainer writes the failure or success file and picks the exit code; `run_entry_point`
    (its framework entry) picks the runner.
    """
    _toolkit_environment_module(paths)
    from sagemaker_training import trainer

    os.environ[FRAMEWORK_MODULE_ENV] = FRAMEWORK_ENTRY
    signal.signal(signal.SIGTERM, functools.partial(_forward_sigterm, paths))
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
    if code != 0 and SCRIPT.stop_forwarded:
        _put_first(paths, "training stopped by SIGTERM: it was forwarded to the user's entry point, which ended with "
                          f"{SCRIPT.ended}; run the job again (with its checkpoint folder, if the script keeps one)")
        return STOPPED_EXIT_CODE
    if code != 0 and SCRIPT.failure:
        _put_first(paths, SCRIPT.failure)
    return code


def _put_first(paths: JobPaths, line: str) -> None:
    """`line` as the failure file's first line, the toolkit's own report below it."""
    try:
        previous = paths.failure_file.read_text(encoding="utf-8") if paths.failure_file.is_file() else ""
        paths.failure_file.write_text(line + "\n" + previous, encoding="utf-8")
    except OSError as exc:
        log.error("cannot write %s (%s); %s", paths.failure_file, exc.strerror or exc, line)

"""The SageMaker training toolkit in `tsa train`: script mode, the `SM_*` variables, the tuning objective.

Run: .venv/bin/pytest tests/unit/test_toolkit.py   (script-mode jobs are real `tsa train` processes)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_job
from tests.inputs import GOOD_HP
from tests.jobs import FAILING_SCRIPT, QUICK, ROWS_SMALL, USER_SCRIPT, fresh_environment, make_job, run_job, script_job
from tsa.config import JobConfig
from tsa.contract import JobPaths, read_channels, read_resource_config

pytestmark = pytest.mark.slow

def test_script_mode_runs_the_users_entry_point_which_calls_the_tsa_api(tmp_path: Path) -> None:
    root = script_job(tmp_path, USER_SCRIPT)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"USER model_dir {root / 'model'} train {root / 'input/data/train'}" in proc.stdout
    assert "Invoking user script" in proc.stdout + proc.stderr  # the toolkit ran it
    metrics = json.loads((root / "model/metrics.json").read_text())
    user_step = json.loads((root / "model/user_step.json").read_text())
    assert user_step["validation_auc"] == metrics["final"]["validation"]["auc"]
    assert (root / "model/model.safetensors").is_file() and (root / "output/success").is_file()


def test_a_failing_user_script_gets_the_toolkits_failure_file_and_exit_code(tmp_path: Path) -> None:
    root = script_job(tmp_path, FAILING_SCRIPT)
    proc = run_job(root)
    assert proc.returncode == 1  # the toolkit's code for a failed user script (a ClientError)
    failure = (root / "output/failure").read_text()
    assert failure.startswith("the entry point 'user_train.py' failed with exit code 3: it wrote nothing to stderr\n"
                              "ExecuteUserScriptError:\nExitCode 3\n")
    assert not (root / "output/success").exists()


RAISING_SCRIPT = '''
import sys
print("USER starting", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
def check(lr):
    raise ValueError(f"the learning rate is negative: {lr}")
try:
    check(-1)
except ValueError as exc:
    raise RuntimeError("the user's set-up failed") from exc
'''


def test_a_raising_user_script_has_its_own_error_first_in_the_failure_file(tmp_path: Path) -> None:
    """Not the toolkit's traceback: the exception line of the script's last traceback (a chained one here)."""
    root = script_job(tmp_path, RAISING_SCRIPT)
    proc = run_job(root)
    assert proc.returncode == 1
    failure = (root / "output/failure").read_text()
    assert failure.splitlines()[0] == ("the entry point 'user_train.py' failed with exit code 1: "
                                       "RuntimeError: the user's set-up failed")
    assert 'ErrorMessage "RuntimeError: the user\'s set-up failed"' in failure and "Traceback" not in failure
    log = proc.stdout + proc.stderr
    assert "ValueError: the learning rate is negative: -1" in log  # the whole stderr still reaches the log
    assert "a warning on stderr\n" in log


def test_script_mode_without_the_config_files_sagemaker_writes_is_refused(tmp_path: Path) -> None:
    """The toolkit's trainer would fail while writing its failure file and exit 0."""
    root = script_job(tmp_path, USER_SCRIPT, with_inputdataconfig=False)
    proc = run_job(root)
    assert proc.returncode == 2
    assert (root / "output/failure").read_text().startswith(
        "script mode ('sagemaker_program' is set) needs inputdataconfig.json in ")


def test_sm_variables_are_derived_by_the_toolkit_from_the_validated_contract(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tsa.toolkit import sm_environment

    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))  # the toolkit reads it at import: keep ours after
    root = write_job(tmp_path / "opt_ml", GOOD_HP, channels=("train", "vali"),
                     resourceconfig={"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]})
    paths = JobPaths(root)
    variables = sm_environment(paths, read_resource_config(paths), read_channels(paths), GOOD_HP)
    assert variables["SM_MODEL_DIR"] == str(root / "model")
    assert variables["SM_OUTPUT_DATA_DIR"] == str(root / "output/data")
    assert variables["SM_CHANNEL_TRAIN"] == str(root / "input/data/train")
    assert variables["SM_CHANNEL_VALIDATION"] == str(root / "input/data/vali")  # canonical name, alias folder
    assert json.loads(variables["SM_HOSTS"]) == ["algo-1", "algo-2"] and variables["SM_CURRENT_HOST"] == "algo-2"
    assert json.loads(variables["SM_HPS"])["n_cat_features"] == "40"  # as hyperparameters.json holds it
    assert variables["SM_NUM_GPUS"] == "0"


def test_tsa_train_sets_the_sm_variables_for_its_ranks(tmp_path: Path) -> None:
    root = make_job(tmp_path / "job", QUICK, rows=ROWS_SMALL)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SM_* environment: " in proc.stdout and f"SM_MODEL_DIR={root / 'model'}" in proc.stdout


@pytest.mark.parametrize(("objective", "level"), [("validation:best_auc", logging.INFO),
                                                  ("validation:f1", logging.WARNING)])
def test_the_tuning_objective_is_accepted_and_logged(caplog: pytest.LogCaptureFixture, objective: str,
                                                     level: int) -> None:
    with caplog.at_level(logging.INFO, logger="tsa.config"):
        JobConfig.from_hyperparameters({**GOOD_HP, "_tuning_objective_metric": objective})
    record = next(r for r in caplog.records if "tuning job: objective metric" in r.getMessage())
    assert objective in record.getMessage() and record.levelno == level


SIGTERM_SCRIPT = '''
import os, signal, sys, time
def stop(signum, frame):
    open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "got_sigterm"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("USER waiting", flush=True)
time.sleep(120)
'''


def test_script_mode_forwards_sigterm_to_the_users_script(tmp_path: Path) -> None:
    """`tsa` is PID 1 in the container; the toolkit's trainer does not pass SIGTERM on."""
    root = script_job(tmp_path, SIGTERM_SCRIPT)
    (root / "output/data").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "tsa", "train"],
                            env={**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "USER waiting" in line:
            break
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert (root / "output/data/got_sigterm").is_file()
    assert proc.returncode == 143
    assert (root / "output/failure").read_text().startswith(
        "training stopped by SIGTERM: it was forwarded to the user's entry point, which ended with exit code 143; ")


def test_contradicting_sm_variables_are_overwritten(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The files SageMaker writes win over SM_* already in the environment, and the job says so."""
    from tsa.toolkit import export_sm_environment

    root = write_job(tmp_path / "job", GOOD_HP, channels=("train", "validation"),
                     resourceconfig={"current_host": "algo-1", "hosts": ["algo-1"]})
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-7")
    paths = JobPaths(root)
    with caplog.at_level("WARNING"):
        export_sm_environment(paths, read_resource_config(paths), read_channels(paths), GOOD_HP)
    assert os.environ["SM_HOSTS"] == '["algo-1"]' and os.environ["SM_CURRENT_HOST"] == "algo-1"
    assert "SM_CURRENT_HOST='algo-7' in the environment contradicts the job's config files ('algo-1')" in caplog.text

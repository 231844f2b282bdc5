"""The job's error policy (`tsa.entrypoint`): exit codes, the failure file, `tsa validate`.

Every bad input and fault, one row each, is in the catalogue (`test_catalogue.py`).

Run: .venv/bin/pytest tests/unit/test_entrypoint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_job
from tests.inputs import GOOD_HP
from tsa.contract import JobPaths
from tsa.entrypoint import run_guarded


def test_internal_error_exits_1_and_says_it_is_a_bug(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path)

    def broken() -> None:
        raise RuntimeError("boom")

    assert run_guarded(paths, broken) == 1
    assert paths.failure_file.read_text().startswith("internal error (RuntimeError: boom)")


def test_existing_failure_file_is_not_overwritten(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path)
    paths.output_dir.mkdir(parents=True)
    paths.failure_file.write_text("rank 1: data file x is corrupt\n")

    def broken() -> None:
        raise RuntimeError("worker exited with code 2")

    run_guarded(paths, broken)
    assert paths.failure_file.read_text() == "rank 1: data file x is corrupt\n"


def test_cli_process_exit_code_and_stderr_traceback(tmp_path: Path) -> None:
    root = write_job(tmp_path / "opt_ml", {**GOOD_HP, "dropout": "2"})
    proc = subprocess.run([sys.executable, "-m", "tsa", "train"], env={"SAGEMAKER_BASE_DIR": str(root), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert (root / "output/failure").read_text().startswith("hyperparameter 'dropout' = '2'")


def test_validate_prints_resolved_config_for_a_file(tmp_path: Path) -> None:
    file = tmp_path / "hp.json"
    file.write_text(json.dumps(GOOD_HP))
    proc = subprocess.run([sys.executable, "-m", "tsa", "validate", str(file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"]["n_cat_features"] == 40


def test_validate_rejects_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    file = tmp_path / "hp.json"
    file.write_text(json.dumps({**GOOD_HP, "num_heads": "3"}))
    proc = subprocess.run([sys.executable, "-m", "tsa", "validate", str(file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "'num_heads' = 3" in proc.stderr


def test_validate_reads_a_file_that_names_a_config_file_as_the_job_does(tmp_path: Path) -> None:
    """`config_file` is resolved under the file's folder, so the file validates before it is uploaded."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train/more.json").write_text(json.dumps({"n_layers_order": "2", "dropout": "0.2"}))
    file = tmp_path / "hp.json"
    file.write_text(json.dumps({**GOOD_HP, "dropout": "0.3", "config_file": "train/more.json"}))
    proc = subprocess.run([sys.executable, "-m", "tsa", "validate", str(file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert resolved["model"]["n_layers_order"] == 2
    assert resolved["model"]["dropout"] == 0.3  # keys in the hyperparameters win over the file's

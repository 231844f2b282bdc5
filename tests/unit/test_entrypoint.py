"""The job's error policy (`tsa.entrypoint`): bad input -> exit 2 and a failure file that says why.

Run: .venv/bin/pytest tests/unit/test_entrypoint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_job
from tests.inputs import GOOD_HP
from tsa.contract import JobPaths
from tsa.entrypoint import main_train, run_guarded

MISSING = "(no hyperparameters.json)"


def _case(hp: Any = None, **kwargs: Any) -> dict[str, Any]:
    return {"hyperparameters": GOOD_HP if hp is None else hp, **kwargs}


# (case id, job description, text the failure file's first line must contain)
BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("malformed_json", _case('{"n_cat_features": "40",'), "hyperparameters.json' is not valid JSON"),
    ("not_an_object", _case('["n_cat_features"]'), "expected a JSON object"),
    ("unknown_key", _case({**GOOD_HP, "foo_bar": "1"}), "'foo_bar' is not known"),
    ("typo_suggests", _case({**GOOD_HP, "n_layer_order": "6"}), "did you mean 'n_layers_order'"),
    ("wrong_type", _case({**GOOD_HP, "n_layers_order": "six"}), "'n_layers_order' = 'six': expected an integer >= 1"),
    ("out_of_range", _case({**GOOD_HP, "dropout": "1.5"}), "'dropout' = '1.5'"),
    ("zero_batch", _case({**GOOD_HP, "batch_size": "0"}), "'batch_size' = '0'"),
    ("bool_prose", _case({**GOOD_HP, "use_time_seq": "yes please"}), "'use_time_seq' = 'yes please'"),
    ("missing_required", _case({"n_num_features": "33", "n_embedding": "120"}), "'n_cat_features' is required"),
    ("inconsistent_heads", _case({**GOOD_HP, "num_heads": "3"}), "'num_heads' = 3: must divide dim_embedding_table"),
    ("use_mlp", _case({**GOOD_HP, "use_mlp": "1"}), "'use_mlp' = true is not supported"),
    ("bad_loss_name", _case({**GOOD_HP, "loss": "MSELoss"}), "'loss' = 'MSELoss'"),
    ("crashing_loss_without_fix", _case({**GOOD_HP, "loss": "BCEWithLogitsLoss"}), "'loss' = 'BCEWithLogitsLoss'"),
    ("small_vocabulary", _case({**GOOD_HP, "n_embedding": "20"}), "'n_embedding' = 20: must exceed n_num_features"),
    ("multiclass", _case({**GOOD_HP, "n_classes": "3"}), "'n_classes' = 3"),
    ("bad_modelname", _case({**GOOD_HP, "modelname": "Transformer"}), "'modelname' = 'Transformer'"),
    ("selectors_disagree", _case({**GOOD_HP, "modelname": "OrderFeature", "num_seq": "2"}), "disagree on the model"),
    ("bad_precision", _case({**GOOD_HP, "precision": "fp8"}), "'precision' = 'fp8'"),
    ("amp_vs_precision", _case({**GOOD_HP, "use_amp": "1", "precision": "32"}), "use_amp=1"),
    ("legacy_load_model", _case({**GOOD_HP, "load_model": "1"}), "'load_model' = '1' is not supported"),
    ("oversized_value", _case({**GOOD_HP, "test_name": "x" * 2600}), "'test_name'"),
    ("too_many_keys", _case({**GOOD_HP, **{f"k{i}": "1" for i in range(100)}}), "104 keys"),
    ("config_file_missing", _case({**GOOD_HP, "config_file": "train/nope.json"}), "'config_file' = 'train/nope.json'"),
    ("config_file_escapes", _case({**GOOD_HP, "config_file": "../../config/x.json"}), "must name a file inside"),
    ("pipe_mode", _case(inputdataconfig={"train": {"TrainingInputMode": "Pipe"}}), "'Pipe' is not supported"),
    ("missing_train_channel", _case(channels=("validation",)), "channel 'train' is missing"),
    ("missing_validation_channel", _case(channels=("train",)), "channel 'validation' is missing"),
    ("duplicate_channel_alias", _case(channels=("train", "val", "vali")), "both name the validation channel"),
    ("bad_inputdataconfig", _case(inputdataconfig="{"), "inputdataconfig.json' is not valid JSON"),
    ("current_host_not_in_hosts", _case(resourceconfig={"current_host": "algo-3", "hosts": ["algo-1"]}),
     "'current_host' = 'algo-3'"),
    # Values that parse but cannot be used, names that would become paths, files that are not what they seem.
    ("infinite_maxlr", _case({**GOOD_HP, "scheduler_maxlr": "1e309"}), "'scheduler_maxlr' = '1e309': expected"),
    ("infinite_weight_decay", _case({**GOOD_HP, "weight_decay": "inf"}), "'weight_decay' = 'inf': expected a finite"),
    ("nan_lr", _case({**GOOD_HP, "lr": "nan"}), "'lr' = 'nan': expected a finite number > 0 and <= 1"),
    ("nan_dropout", _case({**GOOD_HP, "dropout": "NaN"}), "'dropout' = 'NaN': expected a finite"),
    ("huge_lr", _case({**GOOD_HP, "lr": "50"}), "'lr' = '50': expected a finite number > 0 and <= 1"),
    ("test_name_escapes", _case({**GOOD_HP, "test_name": "../../x"}), "'test_name' = '../../x': expected a file name"),
    ("test_name_subfolder", _case({**GOOD_HP, "test_name": "a/b"}), "'test_name' = 'a/b': expected a file name"),
    ("test_name_hidden", _case({**GOOD_HP, "test_name": ".x"}), "'test_name' = '.x': expected a file name"),
    ("data_version_path", _case({**GOOD_HP, "data_version": "v0/../x"}), "'data_version' = 'v0/../x'"),
    ("duplicate_hyperparameter_key", _case('{"n_cat_features": "40", "n_num_features": "33", "n_embedding": "120", '
                                          '"n_cat_features": "41"}'), "names key 'n_cat_features' twice"),
    ("null_hyperparameters", _case("null"), "hyperparameters.json' holds null: expected a JSON object"),
    ("missing_hyperparameters_file", _case(MISSING), "hyperparameters.json' is missing"),
    ("duplicate_channel_key", _case(inputdataconfig='{"train": {}, "train": {}}'), "names key 'train' twice"),
    ("duplicate_hosts", _case(resourceconfig={"current_host": "algo-1", "hosts": ["algo-1", "algo-2", "algo-1"]}),
     "names ['algo-1'] twice"),
    ("endless_layers", _case({**GOOD_HP, "n_layers_order": "100000000"}), "the model does not fit"),
    ("huge_table_width", _case({**GOOD_HP, "dim_embedding_table": "1000000"}), "the model does not fit"),
    ("huge_batch", _case({**GOOD_HP, "batch_size": "100000000"}), "plus the activations of a batch of 100000000"),
    ("too_many_processes", _case({**GOOD_HP, "cpu_processes": "100000"}), "the model does not fit"),
    ("checkpoint_dir_under_a_file", _case({**GOOD_HP, "checkpoint_dir": "/dev/null/x"}),
     "checkpoint folder '/dev/null/x' is not writable"),
]


def _write(tmp_path: Path, case: dict[str, Any]) -> Path:
    idc = case.get("inputdataconfig")
    root = write_job(tmp_path / "opt_ml", case["hyperparameters"],
                     channels=case.get("channels", ("train", "validation")),
                     inputdataconfig=None if isinstance(idc, str) else idc,
                     resourceconfig=case.get("resourceconfig"))
    if isinstance(idc, str):
        (root / "input/config/inputdataconfig.json").write_text(idc)
    if case["hyperparameters"] == MISSING:
        (root / "input/config/hyperparameters.json").unlink()
    return root


@pytest.mark.parametrize(("case", "expected"), [(c, e) for _, c, e in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_a_clear_failure_file(tmp_path: Path, case: dict[str, Any], expected: str) -> None:
    root = _write(tmp_path, case)
    assert main_train(root) == 2
    failure = (root / "output/failure").read_text()
    first_line = failure.splitlines()[0]
    assert expected in first_line
    assert "Traceback" not in failure
    assert len(failure) <= 1024 + 1
    assert not any((root / "model").glob("*")), "no model artifacts after a user error"


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

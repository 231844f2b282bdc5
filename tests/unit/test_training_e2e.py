"""`tsa train` end to end on synthetic data: artifacts, serving, metric lines, DDP, resume.

Run: .venv/bin/pytest tests/unit/test_training_e2e.py   (each job is a real `tsa train` process)
"""

from __future__ import annotations

import itertools
import json
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HYPERPARAMETERS_DIR
from tests.jobs import (
    TINY,
    artifact_names,
    expected_here,
    free_port,
    fresh_environment,
    load_handler,
    make_job,
    metrics,
    predictions,
    run_job,
    slowed,
    stopped_job,
)
from tsa.contract import JobPaths
from tsa.data.convert import read_npy_arrays
from tsa.entrypoint import load_job_config
from tsa.legacy import load_legacy_state_dict
from tsa.weights import load_weights

pytestmark = pytest.mark.slow

MODEL_FILES = artifact_names("tiny")
# A line of the job's own: a log record in its format (`tsa.logs`) or a METRIC line.
JOB_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \[rank \d+\] [\w.-]+: |METRIC ")
OUTPUT_FILES = {"predictions_validation.csv", "predictions_calibration.csv", "roc_pr_validation.png",
                "roc_pr_calibration.png", "loss_curves.png"}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def instances(root: Path, rows: list[int]) -> str:
    """JSON request of validation examples, in the legacy per-example array layout."""
    folder = root / "input/data/validation"
    if any(folder.glob("*.npy")):
        arrays = read_npy_arrays(folder)
    else:
        from tsa.data.parquet import ParquetChannel
        from tsa.data.schema import array_specs
        channel = ParquetChannel("validation", folder, array_specs(load_job_config(JobPaths(root)).model))
        arrays = channel.take(np.asarray(rows), channel.names)
        rows = list(range(len(rows)))
    names = [n for n in arrays if n != "Y"]
    return json.dumps({"instances": [{n: np.asarray(arrays[n][r]).tolist() for n in names} for r in rows]})


JOB_KINDS = [pytest.param((model_type, fmt), id=f"{model_type}-{fmt}",
                          marks=pytest.mark.xdist_group(f"e2e-{model_type}-{fmt}"))
             for model_type, fmt in (("single", "npy"), ("single", "parquet"), ("dual", "npy"), ("dual", "parquet"))]


@pytest.fixture(scope="module", params=JOB_KINDS)
def finished_job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `tsa train` job per model kind and data format, shared by the tests below."""
    model_type, fmt = request.param
    root = make_job(tmp_path_factory.mktemp(f"{model_type}-{fmt}") / "job", {**TINY, "model_type": model_type},
                    fmt=fmt)
    (root / "output/tensorboard").mkdir(parents=True)  # as SageMaker creates it for a TensorBoardOutputConfig
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_model_folder_holds_exactly_the_artifact_set(finished_job: Path) -> None:
    assert files_under(finished_job / "model") == MODEL_FILES
    assert not (finished_job / "output/failure").exists()


def test_tensorboard_events_hold_the_epoch_aucs_and_success_is_reported(finished_job: Path) -> None:
    """Read back with the tensorboard library: the per-epoch AUCs are the ones metrics.json records."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (finished_job / "output/success").is_file()
    events = EventAccumulator(str(finished_job / "output/tensorboard"))
    events.Reload()
    aucs = [(event.step, event.value) for event in events.Scalars("validation/auc_per_epoch")]
    recorded = [(epoch["epoch"], epoch["validation_auc"]) for epoch in metrics(finished_job)["epochs"]]
    assert [step for step, _ in aucs] == [epoch for epoch, _ in recorded]
    assert np.allclose([v for _, v in aucs], [v for _, v in recorded], rtol=0, atol=1e-6)  # stored as float32
    assert {"train/step_loss", "train/samples_per_second", "train/learning_rate_per_epoch"} <= \
        set(events.Tags()["scalars"])


def test_output_folder_holds_predictions_and_plots(finished_job: Path) -> None:
    assert OUTPUT_FILES <= files_under(finished_job / "output/data")
    assert len(predictions(finished_job, "validation")) == 160


def test_metrics_record_every_epoch_and_the_final_scores(finished_job: Path) -> None:
    result = metrics(finished_job)
    assert len(result["epochs"]) == 2 and result["best_epoch"] in (0, 1)
    assert set(result["final"]) == {"validation", "calibration"}


def test_score_files_and_percentile_map_are_the_legacy_tables(finished_job: Path) -> None:
    model_dir = finished_job / "model"
    table = pickle.loads((model_dir / "percentile_score.pkl").read_bytes())
    assert len(table) == 1000 and [k for _, k in table] == [k / 1000 for k in range(1000)]
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(table))
    assert len((model_dir / "score_file.csv").read_text().split()) == 160


def test_serving_code_scores_from_the_artifacts_alone_as_the_job_did(finished_job: Path) -> None:
    model_dir = finished_job / "model"
    handler = load_handler(model_dir)
    served = handler.model_fn(str(model_dir))
    rows = [0, 3, 7]
    body, kind = handler.output_fn(handler.predict_fn(handler.input_fn(instances(finished_job, rows),
                                                                       "application/json"), served), "application/json")
    assert kind == "application/json"
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    expected = predictions(finished_job, "validation")
    keys = [str(r) for r in rows]  # npy: ids are row numbers; synth Parquet writes ids "0".."N-1"
    np.testing.assert_allclose(scores, [expected[k] for k in keys], rtol=1e-5, atol=1e-6)


def test_legacy_keyed_file_holds_the_same_weights_as_safetensors(finished_job: Path) -> None:
    model_dir = finished_job / "model"
    model, _ = load_weights(model_dir)
    legacy_copy, _ = load_weights(model_dir)
    load_legacy_state_dict(legacy_copy, torch.load(model_dir / "tiny.pt", weights_only=True))
    for (name, a), (_, b) in zip(model.state_dict().items(), legacy_copy.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_metric_definitions_match_the_job_log(tmp_path: Path) -> None:
    root = make_job(tmp_path / "job", TINY)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "\r" not in log, "no carriage-return progress bars (CloudWatch)"
    assert [line for line in log.splitlines() if not JOB_LINE.match(line)] == [], "the job's own lines only"
    definitions = json.loads((HYPERPARAMETERS_DIR / "metric_definitions.json").read_text())
    for definition in definitions:
        found = re.findall(definition["Regex"], log)
        if not expected_here(definition):
            assert not found, definition
            continue
        assert found, f"{definition['Name']}: no log line matches {definition['Regex']}"
        [float(value) for value in found]
    aucs = [float(v) for v in re.findall(r" validation_auc=([0-9.eE+-]+);", log)]
    assert aucs == [round(epoch["validation_auc"], 4) for epoch in metrics(root)["epochs"]]


def test_two_processes_on_one_host_match_single_process_evaluation(tmp_path: Path) -> None:
    root = make_job(tmp_path / "job", {**TINY, "cpu_processes": "2"})
    proc = run_job(root, env={"MASTER_PORT": str(free_port())})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world: 1 node(s) x 2 cpu process(es)" in proc.stdout
    assert [line for line in (proc.stdout + proc.stderr).splitlines() if not JOB_LINE.match(line)] == []
    result = metrics(root)
    best = result["epochs"][result["best_epoch"]]
    # The final scoring is a single process over the best weights: same AUC as the DDP validation.
    assert result["final"]["validation"]["auc"] == round(best["validation_auc"], 4)
    assert len(predictions(root, "validation")) == 160


def test_two_hosts_train_together_and_only_rank_zero_writes(tmp_path: Path) -> None:
    data = make_job(tmp_path / "data_job", TINY).joinpath("input/data")
    port = str(free_port())
    procs = []
    roots = []
    for host in ("algo-1", "algo-2"):
        root = make_job(tmp_path / host, TINY, data=data,
                        resourceconfig={"current_host": host, "hosts": ["algo-1", "algo-2"]})
        roots.append(root)
        env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "this host algo-2 is node 1; master algo-1" in outputs[1]
    assert files_under(roots[0] / "model") == MODEL_FILES
    assert files_under(roots[1] / "model") == set()
    result = metrics(roots[0])  # DDP validation AUC of the best epoch = single-process scoring of its weights
    assert result["final"]["validation"]["auc"] == round(result["epochs"][result["best_epoch"]]["validation_auc"], 4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reference = make_job(tmp_path_factory.mktemp("reference") / "job", RESUME_HP)
    assert run_job(reference).returncode == 0
    return reference


RESUME_HP = {**TINY, "batch_size": "8", "max_epoch": "3", "log_every_n_steps": "1"}  # 40 steps an epoch


@pytest.mark.parametrize(("signals", "at_step"), [((signal.SIGTERM,), 12), ((signal.SIGKILL,), 52),
                                                  ((signal.SIGTERM, signal.SIGTERM), 12)],
                         ids=["sigterm_mid_epoch_0", "sigkill_in_epoch_1_resumes_from_its_start",
                              "a_second_sigterm_changes_nothing"])
def test_stopped_run_resumes_to_the_uninterrupted_weights(tmp_path: Path, uninterrupted: Path,
                                                          signals: tuple[int, ...], at_step: int) -> None:
    root = make_job(tmp_path / "stopped", RESUME_HP, data=uninterrupted / "input/data")
    env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1"}
    code, rest, seconds = stopped_job(env, f"METRIC step={at_step};", signals)
    signum = signals[0]
    assert seconds < 60
    checkpoint = root / "checkpoints/last.ckpt"
    assert checkpoint.is_file() and not checkpoint.is_symlink()
    assert not (root / "model/model.safetensors").exists()
    if signum == signal.SIGTERM:
        assert code == 143, rest[-3000:]
        assert (root / "output/failure").read_text().startswith("training stopped by SIGTERM")

    resumed = run_job(root)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert not (root / "output/failure").exists()
    ours = load_file(str(root / "model/model.safetensors"))
    theirs = load_file(str(uninterrupted / "model/model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert metrics(root)["epochs"] == metrics(uninterrupted)["epochs"]


RESUME_HP_TWO_RANKS = {**RESUME_HP, "cpu_processes": "2"}  # 20 training steps and 10 validation batches a rank


def test_two_ranks_stopped_in_validation_resume_exactly(tmp_path: Path) -> None:
    """Each rank stops at its own next validation batch; global rank 0 alone writes the checkpoint (no
    collective), and the rerun validates epoch 1 again and ends with the uninterrupted run's weights and
    history. The stop comes from outside, while epoch 1's validation is slowed (0.5 s a batch)."""
    reference = make_job(tmp_path / "reference", RESUME_HP_TWO_RANKS)
    assert run_job(reference, env={"MASTER_PORT": str(free_port())}).returncode == 0
    root = make_job(tmp_path / "stopped", RESUME_HP_TWO_RANKS, data=reference / "input/data")
    env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1",
           "MASTER_PORT": str(free_port()), **slowed("tsa.training.evaluation:EvaluationPass.add=0.5@12")}
    code, rest, _ = stopped_job(env, "SLOW-UNIT")
    assert code == 143, rest[-3000:]
    assert (root / "output/failure").read_text().startswith(
        "training stopped by SIGTERM (stop, timeout or spot interruption) during the validation of epoch 1; "
        "checkpoint saved to")
    resumed = run_job(root, env={"MASTER_PORT": str(free_port())})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    retrained = [line for line in resumed.stdout.splitlines()
                 if line.startswith("METRIC step=") and "; epoch=1;" in line]
    assert retrained == [], "epoch 1 was trained again"
    ours = load_file(str(root / "model/model.safetensors"))
    theirs = load_file(str(reference / "model/model.safetensors"))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert metrics(root)["epochs"] == metrics(reference)["epochs"]


def score_lines(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


def test_evaluation_order_is_the_legacy_sampler_order_unless_fixed(tmp_path: Path) -> None:
    """Default: validation in torch's DistributedSampler order (seed 0 + epoch); the Q24 fix: row order."""
    from torch.utils.data import DistributedSampler

    from tests.jobs import read_trace

    hp = {**TINY, "use_moe": "1", "num_experts": "3", "batch_size": "48", "trace": "true"}
    legacy = make_job(tmp_path / "legacy", hp)
    fixed = make_job(tmp_path / "fixed", {**hp, "fix_evaluation_order": "true"}, data=legacy / "input/data")
    for root in (legacy, fixed):
        proc = run_job(root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n_validation = 160

    def sampler_order(epoch: int) -> list[int]:
        sampler = DistributedSampler(range(n_validation), num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        return list(sampler)

    legacy_trace = read_trace(legacy / "output/data/trace/rank0.jsonl")
    fixed_trace = read_trace(fixed / "output/data/trace/rank0.jsonl")
    epochs = [r for r in legacy_trace if "epoch" in r and "final" not in r]
    assert [r["validation_rows"] for r in epochs] == [sampler_order(r["epoch"]) for r in epochs]
    assert all(r["validation_rows"] == list(range(n_validation))
               for r in fixed_trace if "epoch" in r and "final" not in r)

    # Score files: line i is the i-th evaluated example (legacy: the final pass's sampler order).
    final_order = sampler_order(len(epochs))
    by_row = predictions(legacy, "validation")
    np.testing.assert_allclose(score_lines(legacy / "model/score_file.csv"),
                               [by_row[str(r)] for r in final_order], rtol=0, atol=1e-9)
    fixed_by_row = predictions(fixed, "validation")
    np.testing.assert_allclose(score_lines(fixed / "model/score_file.csv"),
                               [fixed_by_row[str(r)] for r in range(n_validation)], rtol=0, atol=1e-9)
    # Numeric (MoE routes across the batch, and a partial last batch weighs the mean of batch means).
    assert [e["validation_loss"] for e in metrics(legacy)["epochs"]] != \
        [e["validation_loss"] for e in metrics(fixed)["epochs"]]


SIGTERM_AT_CALL = """
import os, signal, sys
import {module} as target
calls = {{"n": 0}}
original = target.{owner}.{method}
def call_then_stop(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == {call}:  # SIGTERM from outside, as SageMaker sends it, at exactly this point
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args, **kwargs)
setattr(target.{owner}, "{method}", call_then_stop)
from tsa.cli import main
sys.exit(main(["train"]))
"""


@pytest.mark.parametrize(("module", "owner", "method", "call", "epoch"), [
    ("tsa.training.evaluation", "EvaluationPass", "add", 20 + 3, 1),  # the third batch of epoch 1's validation
    ("tsa.training.system", "TsaSystem", "training_step", 40, 0),  # epoch 0's last step: stops in its validation
], ids=["during_validation_of_epoch_1", "at_the_last_step_of_epoch_0"])
def test_a_stop_during_validation_keeps_the_trained_epoch_and_resumes_exactly(
        tmp_path: Path, uninterrupted: Path, module: str, owner: str, method: str, call: int, epoch: int) -> None:
    """The validation ends within a batch (exit 143) with a checkpoint of the trained epoch; the rerun validates
    that epoch again without training it again, and ends with the uninterrupted run's weights and history
    (40 training steps and 20 validation batches an epoch)."""
    root = make_job(tmp_path / "stopped", RESUME_HP, data=uninterrupted / "input/data")
    env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1"}
    script = SIGTERM_AT_CALL.format(module=module, owner=owner, method=method, call=call)
    stopped = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 143, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert (root / "output/failure").read_text().startswith(
        f"training stopped by SIGTERM (stop, timeout or spot interruption) during the validation of epoch {epoch}; "
        f"checkpoint saved to {root / 'checkpoints/last.ckpt'} with the epoch trained")
    resumed = run_job(root)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    retrained = [line for line in resumed.stdout.splitlines() if line.startswith("METRIC step=")
                 and f"; epoch={epoch};" in line]
    assert retrained == [], "the stopped epoch was trained again"
    ours = load_file(str(root / "model/model.safetensors"))
    theirs = load_file(str(uninterrupted / "model/model.safetensors"))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert metrics(root)["epochs"] == metrics(uninterrupted)["epochs"]

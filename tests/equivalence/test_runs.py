"""Whole training runs: `tsa train` against the legacy `train.py` loop, bit for bit.

Run: .venv/bin/pytest tests/equivalence/test_runs.py   (TSA_LEGACY_RUN_FIXTURES=<folder> for another set)

Every case of the run-fixture manifest is trained once by a real `tsa train` process
(module-scoped, one xdist group per case) and compared with what the legacy loop recorded, with
the rules of ../shared/docs/legacy_run_fixtures.md §8: weights after every epoch and the saved
best weights bit-equal, per-batch losses bit-equal, training rows and the RNG stream before every
forward equal per rank, AUCs, learning rates, best epoch and early stopping equal, logged losses
within 1e-9, score/tag files and the percentile map within 1e-6. The resume cases stop one
world-1 and one world-2 case with SIGTERM in the middle of an epoch and rerun it.

Valid on CPU with torch 2.13 and one thread per process, the fixtures' conditions.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.equivalence.runs import (
    RUN_FIXTURE_DIR,
    CaseRun,
    find_mkl_path,
    run_case,
    run_case_with_stop,
    run_cases,
    run_manifest,
    tensor_sha1,
)
from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import model_inputs, open_channel, to_batch
from tsa.legacy import load_legacy_state_dict
from tsa.models import build_model
from tsa.training.metrics import get_performance

pytestmark = pytest.mark.slow

LOSS_ATOL = 1e-9  # float64 means of bit-equal float32 losses: only the summation order may differ
SCORE_ATOL = 1e-6  # the legacy score files: scipy float64 softmax of float32 logits


@pytest.fixture(scope="session")
def mkl_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MKL code path the set was made on (runs.py), as the shim every job preloads."""
    _, shim = find_mkl_path(tmp_path_factory.mktemp("mkl"))
    return shim


@pytest.fixture(scope="module", params=run_cases())
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mkl_shim: Path) -> CaseRun:
    entry = request.param
    result = run_case(entry, tmp_path_factory.mktemp(entry["case_id"]) / "opt_ml", mkl_shim)
    assert result.returncode == 0, result.log[-4000:]
    return result


def first_difference(ours: list[Any], theirs: list[Any]) -> str:
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    return f"first difference at index {index} (lengths {len(ours)} vs {len(theirs)})"


def differing_tensors(digests: dict[str, str], expected: dict[str, str]) -> list[str]:
    return sorted(key for key, value in expected.items() if digests.get(key) != value)


def test_initial_weights_and_rng_match(run: CaseRun) -> None:
    expected_digests = {key: tensor_sha1(t) for key, t in run.expected["initial_state_dict"].items()}
    for rank in range(run.world_size):
        init = run.init_record(rank)
        assert differing_tensors(init["weights_sha1"], expected_digests) == [], f"rank {rank}"
        assert init["rng_after_init"] == run.expected["rng_after_init"][rank], f"rank {rank}"


def test_every_epoch_trains_the_same_rows_with_the_same_randomness(run: CaseRun) -> None:
    for rank in range(run.world_size):
        records = run.epoch_records(rank)
        assert len(records) == run.expected["epochs_trained"], f"rank {rank}"
        for ours, theirs in zip(records, run.expected["epochs"], strict=True):
            where = f"rank {rank}, epoch {theirs['epoch']}"
            assert ours["train_rows"] == theirs["train_rows"][rank].tolist(), where
            assert ours["validation_rows"] == theirs["validation_rows"][rank].tolist(), where
            rng = theirs["rng_before_forward"][rank]
            assert ours["rng_before_forward"] == rng, f"{where}: {first_difference(ours['rng_before_forward'], rng)}"


def test_every_batch_loss_is_bit_equal(run: CaseRun) -> None:
    for rank in range(run.world_size):
        for ours, theirs in zip(run.epoch_records(rank), run.expected["epochs"], strict=True):
            losses = theirs["train_step_losses"][rank].tolist()
            assert ours["train_step_losses"] == losses, (
                f"rank {rank}, epoch {theirs['epoch']}: {first_difference(ours['train_step_losses'], losses)}"
            )


def test_weights_after_every_epoch_are_bit_equal(run: CaseRun) -> None:
    for ours, theirs in zip(run.epoch_records(0), run.expected["epochs"], strict=True):
        differing = differing_tensors(ours["weights_sha1"], theirs["weights_sha1"])
        assert differing == [], f"epoch {theirs['epoch']}: {len(differing)} tensors differ, e.g. {differing[:4]}"


def test_logged_epoch_metrics_match(run: CaseRun) -> None:
    epochs = run.metrics()["epochs"]
    assert [e["epoch"] for e in epochs] == [e["epoch"] for e in run.expected["epochs"]]
    for ours, theirs in zip(epochs, run.expected["epochs"], strict=True):
        where = f"epoch {theirs['epoch']}"
        assert ours["learning_rate"] == theirs["lr"], where
        assert ours["validation_auc"] == theirs["validation_auc"], where
        assert abs(ours["train_loss"] - theirs["train_loss_logged"]) <= LOSS_ATOL, where
        assert abs(ours["validation_loss"] - theirs["validation_loss_logged"]) <= LOSS_ATOL, where


def test_model_selection_and_early_stopping_match(run: CaseRun) -> None:
    metrics, expected = run.metrics(), run.expected
    assert metrics["best_epoch"] == expected["best_epoch"]
    assert metrics["best_validation_auc"] == expected["best_validation_auc"]
    assert len(metrics["epochs"]) == expected["epochs_trained"]
    assert metrics["early_stop"] == expected["early_stop"]


def test_saved_best_weights_are_bit_equal(run: CaseRun) -> None:
    ours = torch.load(run.root / "model" / f"{run.expected['test_name']}.pt", weights_only=True)
    theirs = run.expected["best_state_dict"]
    assert sorted(ours) == sorted(theirs), "legacy keys differ"
    differing = [key for key, tensor in theirs.items() if not torch.equal(ours[key], tensor)]
    worst = max(((ours[k].double() - theirs[k].double()).abs().max().item(), k) for k in differing) if differing else 0
    assert differing == [], f"{len(differing)} tensors differ; largest {worst}"


def read_column(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64, ndmin=1)


def test_post_training_files_match(run: CaseRun) -> None:
    files, model_dir = run.expected["files"], run.root / "model"
    for split, prefix in (("vali", ""), ("cali", "cali_")):
        # Our files keep the legacy line order (the gathered sampler order), so lines compare directly.
        np.testing.assert_array_equal(read_column(model_dir / f"{prefix}tag_file.csv"), files[split]["tag"].numpy())
        np.testing.assert_allclose(read_column(model_dir / f"{prefix}score_file.csv"), files[split]["score"].numpy(),
                                   rtol=0, atol=SCORE_ATOL)
    table = np.asarray(pickle.loads((model_dir / "percentile_score.pkl").read_bytes()))
    np.testing.assert_allclose(table, files["percentile"].numpy(), rtol=0, atol=SCORE_ATOL)
    final = run.metrics()["final"]["validation"]
    assert final["auc"] == files["vali"]["auc"]
    assert abs(final["loss_logged"] - files["vali"]["loss_logged"]) <= LOSS_ATOL


def test_final_scoring_uses_the_legacy_order(run: CaseRun) -> None:
    expected_index = run.expected["files"]["eval_epoch_index"]
    for rank in range(run.world_size):
        finals = [r for r in run.traces[rank] if "final" in r]
        assert [r["final"] for r in finals][:2] == ["validation", "calibration"]
        assert {r["epoch_index"] for r in finals} == {expected_index}
    rows = [row for rank in range(run.world_size) for row in
            next(r for r in run.traces[rank] if r.get("final") == "validation")["rows"]]
    assert rows[: len(run.expected["files"]["vali"]["rows"])] == run.expected["files"]["vali"]["rows"].tolist()


FAST_LOGIT_ATOL = 1e-5  # the fast-mode contract (fp32 fused attention) at the run fixtures' sizes
FAST_AUC_ATOL = 1e-3


@pytest.mark.parametrize("entry", run_cases())
def test_fast_mode_scores_the_legacy_best_model_like_the_exact_path(entry: dict[str, Any]) -> None:
    """Fast mode's forward on the legacy best weights: logits within 1e-5 of the exact path, same AUC."""
    expected = torch.load(RUN_FIXTURE_DIR / entry["case_id"] / "expected.pt", weights_only=True)
    hyperparameters = dict(expected["hyperparameters"])
    scores = {fast: score_best_model(expected, {**hyperparameters, "fast_mode": str(fast).lower()})
              for fast in (False, True)}
    labels = expected["files"]["vali"]["tag"]
    assert (scores[True] - scores[False]).abs().max().item() <= FAST_LOGIT_ATOL
    auc = {fast: get_performance(s, labels, ["auc"])["auc"] for fast, s in scores.items()}
    assert abs(auc[True] - auc[False]) <= FAST_AUC_ATOL


def score_best_model(expected: dict[str, Any], hyperparameters: dict[str, str]) -> torch.Tensor:
    """Logits of the legacy best weights on the validation rows, in the legacy final pass's order."""
    config = JobConfig.from_hyperparameters(hyperparameters)
    model = build_model(config.model, fused_attention=config.runtime.fast_mode)
    load_legacy_state_dict(model, expected["best_state_dict"])
    model.eval()
    folder = RUN_FIXTURE_DIR / expected["case_id"] / "job/input/data/vali"
    channel = open_channel(Channel("validation", folder), config.data, config.model)
    rows = expected["files"]["vali"]["rows"].numpy()
    batch_size = config.train.batch_size
    torch.manual_seed(0)  # the MoE's eval-time draws (Q4): the same stream for both modes
    outputs = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = to_batch(channel.take(rows[start:start + batch_size], channel.names), config.model.model_type)
            inputs, _ = model_inputs(batch, config.model)
            outputs.append(model(**inputs)[0])
    return torch.cat(outputs)


def _resume_cases() -> list[Any]:
    """The first world-1 and the first world-2 case of the manifest."""
    chosen: dict[int, Any] = {}
    for param in run_cases():
        chosen.setdefault(int(param.values[0]["world_size"]), param)
    return [chosen[w] for w in sorted(chosen) if w in (1, 2)]


@pytest.fixture(scope="module", params=_resume_cases())
def resumed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mkl_shim: Path) -> CaseRun:
    entry = request.param
    result, stopped_log, stopped_code = run_case_with_stop(entry, tmp_path_factory.mktemp(entry["case_id"]) / "job",
                                                           mkl_shim)
    assert stopped_code == 143, stopped_log[-4000:]
    assert "resuming" in result.log, result.log[-4000:]
    assert result.returncode == 0, result.log[-4000:]
    return result


def test_stopped_and_resumed_run_equals_the_uninterrupted_legacy_run(resumed: CaseRun) -> None:
    test_saved_best_weights_are_bit_equal(resumed)
    test_logged_epoch_metrics_match(resumed)
    test_model_selection_and_early_stopping_match(resumed)
    test_post_training_files_match(resumed)
    records = {r["epoch"]: r for r in resumed.epoch_records(0)}
    for theirs in resumed.expected["epochs"]:
        assert differing_tensors(records[theirs["epoch"]]["weights_sha1"], theirs["weights_sha1"]) == []


def test_manifest_lists_world_sizes_one_and_two() -> None:
    sizes = {int(entry["world_size"]) for entry in run_manifest()["cases"]}
    assert {1, 2} <= sizes, f"the resume cases need a world-1 and a world-2 case, the manifest has {sorted(sizes)}"

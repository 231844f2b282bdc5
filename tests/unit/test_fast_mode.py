"""Fast mode's numerical contract, and that it never touches the exact path.

Run: .venv/bin/pytest tests/unit/test_fast_mode.py

Contract: with fused attention in fp32, every eval `model` fixture case is reproduced within
1e-5 (the exact path: 1e-6); fast-mode training (bf16 autocast, fused attention) reaches the
exact path's validation AUC within 0.005 on the synthetic data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import load_example
from tests.equivalence.fixtures import cases, load
from tests.inputs import MODEL_TYPES
from tests.jobs import make_job, metrics, run_job
from tsa.config import JobConfig
from tsa.contract import ResourceConfig
from tsa.legacy import load_legacy_state_dict, model_config_from_legacy_kwargs
from tsa.models import build_model
from tsa.training.plan import RunPlan, plan_run

FAST_TOL = {"rtol": 1e-5, "atol": 1e-5}
# Eval-mode cases only: in train mode the fused kernel draws its dropout masks differently.
EVAL_MODEL_CASES = [p for p in cases("model") if load(p.values[0])["mode"] == "eval"]


@pytest.mark.parametrize("entry", EVAL_MODEL_CASES)
def test_fused_attention_reproduces_the_legacy_fixtures_within_1e_5(entry: dict[str, Any]) -> None:
    fx = load(entry)
    cfg = model_config_from_legacy_kwargs(fx["ctor_kwargs"], MODEL_TYPES[fx["target"]])
    model = build_model(cfg, fused_attention=True)
    load_legacy_state_dict(model, fx["state_dict"])
    model.eval()
    torch.manual_seed(fx["forward_seed"])
    with torch.no_grad():
        scores, ensemble = model(**fx["inputs"])
    torch.testing.assert_close(scores, fx["outputs"]["scores"], **FAST_TOL)
    torch.testing.assert_close(ensemble, fx["outputs"]["ensemble"], **FAST_TOL)
    assert torch.equal(torch.get_rng_state(), fx["rng_state_after_forward"])


def plan(hyperparameters: dict[str, str], gpus: int) -> RunPlan:
    """The run plan on a machine with `gpus` GPUs (0: CPU only)."""
    return plan_run(JobConfig.from_hyperparameters(hyperparameters), ResourceConfig(), gpus=gpus)


def test_fast_mode_is_off_by_default_and_the_plan_decides_its_parts() -> None:
    base = {"n_cat_features": "40", "n_num_features": "33", "n_embedding": "120"}
    for gpus in (0, 8):
        exact = plan(base, gpus)
        assert (exact.precision, exact.fused_attention, exact.compile_model, exact.fast_matmul) == ("32", False,
                                                                                                  False, False)
    fast_gpu = plan({**base, "fast_mode": "true"}, gpus=8)
    assert (fast_gpu.precision, fast_gpu.fused_attention, fast_gpu.compile_model, fast_gpu.fast_matmul) == (
        "bf16-mixed", True, True, True)
    assert fast_gpu.world.devices == 8
    fast_cpu = plan({**base, "fast_mode": "true"}, gpus=0)
    assert (fast_cpu.precision, fast_cpu.fused_attention, fast_cpu.compile_model) == ("32", True, False)
    assert plan({**base, "fast_mode": "1", "precision": "32"}, gpus=8).precision == "32"
    assert plan({**base, "use_amp": "1"}, gpus=8).precision == "16-mixed"
    assert plan({**base, "use_amp": "1"}, gpus=0).precision == "32"  # legacy AMP was GPU only


@pytest.mark.slow
def test_fast_mode_training_reaches_the_exact_validation_auc(tmp_path: Path) -> None:
    hp = {**load_example("smoke"), "max_epoch": "6", "log_every_n_steps": "1000"}  # trained to its plateau
    rows = "train=4000,validation=2000,calibration=100"
    exact = make_job(tmp_path / "exact", hp, rows=rows)
    fast = make_job(tmp_path / "fast", {**hp, "fast_mode": "true"}, data=exact / "input/data")
    for root in (exact, fast):
        proc = run_job(root)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exact_auc = metrics(exact)["best_validation_auc"]
    fast_auc = metrics(fast)["best_validation_auc"]
    assert exact_auc > 0.85
    assert abs(fast_auc - exact_auc) <= 0.005, (exact_auc, fast_auc)


@pytest.mark.parametrize("example", ["eu_single", "na_dual", "smoke"])
def test_the_memory_check_counts_the_parameters_within_5_percent(example: str) -> None:
    from tsa.training.plan import parameter_count

    config = JobConfig.from_hyperparameters(load_example(example))
    real = sum(p.numel() for p in build_model(config.model).parameters())
    assert abs(parameter_count(config) - real) <= 0.05 * real

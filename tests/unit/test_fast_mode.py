"""Fast mode's numerical contract, and that it never touches the exact path.

Run: .venv/bin/pytest tests/unit/test_fast_mode.py

Contract: with fused attention in fp32, every eval `model` fixture case is reproduced within
1e-5 (the exact path: 1e-6); fast-mode training (bf16 autocast, fused attention) reaches the
exact path's validation AUC within 0.005 on the synthetic data; the fast training step compiles
whole (`torch.compile(fullgraph=True)`: no graph break, so no host read and no data-dependent shape)
for both models with MoE and time on and off, and computes the eager step's loss and gradients.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import load_example
from tests.equivalence.fixtures import cases, load, model_config_from_legacy_kwargs
from tests.inputs import MODEL_TYPES
from tests.jobs import TINY, make_job, metrics, run_job
from tsa.config import JobConfig
from tsa.contract import ResourceConfig
from tsa.data import model_inputs, to_batch
from tsa.data.synth import generate
from tsa.legacy import load_legacy_state_dict
from tsa.models import build_model
from tsa.models.losses import select_loss
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
    return plan_run(JobConfig.from_hyperparameters(hyperparameters).runtime, ResourceConfig(), gpus=gpus)


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
        proc = run_job(root, timeout=600)  # 6 epochs of 4000 rows: minutes on a loaded 2-core machine
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exact_auc = metrics(exact)["best_validation_auc"]
    fast_auc = metrics(fast)["best_validation_auc"]
    assert exact_auc > 0.85
    assert abs(fast_auc - exact_auc) <= 0.005, (exact_auc, fast_auc)


@pytest.mark.parametrize("example", ["eu_single", "na_dual", "smoke"])
def test_the_memory_check_counts_the_parameters_within_5_percent(example: str) -> None:
    from tsa.training.budget import parameter_count

    config = JobConfig.from_hyperparameters(load_example(example))
    real = sum(p.numel() for p in build_model(config.model).parameters())
    assert abs(parameter_count(config.model) - real) <= 0.05 * real


def fast_training_step(model_type: str, use_moe: bool, use_time_seq: bool, dropout: float = 0.0) -> tuple[Any, ...]:
    """A tiny fast-mode model in train mode, its legacy loss and one synthetic batch."""
    hp = {**TINY, "model_type": model_type, "use_moe": str(int(use_moe)), "use_time_seq": str(int(use_time_seq)),
          "num_experts": "3", "fast_mode": "true", "dropout": str(dropout)}
    config = JobConfig.from_hyperparameters(hp)
    torch.manual_seed(0)
    model = build_model(config.model, fused_attention=True).train()
    inputs, y = model_inputs(to_batch(generate(config.model, 24, seed=1), model_type), config.model)
    loss_fn = select_loss(config.train)

    def step(inputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        scores, _ = model(**inputs)
        return loss_fn(scores, y, epoch=0, training=True)

    return model, step, inputs, y


def loss_and_gradients(model: torch.nn.Module, step: Any, inputs: dict[str, torch.Tensor], y: torch.Tensor,
                       seed: int = 7) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout masks and the MoE's second-expert draws
    loss = step(inputs, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


OPTIONS = list(itertools.product(("single", "dual"), (False, True), (False, True)))


@pytest.mark.parametrize(("model_type", "use_moe", "use_time_seq"), OPTIONS,
                         ids=[f"{m}-moe{int(e)}-time{int(t)}" for m, e, t in OPTIONS])
def test_the_fast_training_step_compiles_whole(model_type: str, use_moe: bool, use_time_seq: bool) -> None:
    """fullgraph=True fails on any graph break (`.item()`, `nonzero`, a branch on a tensor value); the
    aot_eager backend traces forward and backward into graphs and runs them with the eager kernels, so
    the compiled step must give the eager step's numbers (dropout 0: traced dropout draws its masks in
    another order; the inductor test below trains with it)."""
    model, step, inputs, y = fast_training_step(model_type, use_moe, use_time_seq)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, grads = loss_and_gradients(model, compiled, inputs, y)
    eager_loss, eager_grads = loss_and_gradients(model, step, inputs, y)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-5, atol=1e-6, msg=name)


# Random draws on: the single model with MoE (second-expert draws) and dropout. The dual model has them
# off: inductor may order its encoders' draws differently (other masks, not another computation).
INDUCTOR_CASES = [("single", {"use_moe": True, "use_time_seq": True, "dropout": 0.1}),
                  ("dual", {"use_moe": False, "use_time_seq": True, "dropout": 0.0})]


@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "options"), INDUCTOR_CASES, ids=[c[0] for c in INDUCTOR_CASES])
def test_inductor_compiles_the_fast_training_step(model_type: str, options: dict[str, Any]) -> None:
    """The real compiler (inductor, C++ on CPU), whole; `fallback_random` so its draws are eager's."""
    model, step, inputs, y = fast_training_step(model_type, **options)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        loss, grads = loss_and_gradients(model, torch.compile(step, fullgraph=True), inputs, y)
    eager_loss, eager_grads = loss_and_gradients(model, step, inputs, y)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-5, msg=name)


class FixedGate(torch.nn.Module):
    """A gate network that answers fixed (g_cid, g_ccid) per row, whatever its input."""

    def __init__(self, gates: torch.Tensor) -> None:
        super().__init__()
        self.gates = gates

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.gates + 0 * features[:, :1]


def test_fast_training_masks_the_dropped_ccid_rows_as_the_sub_batch_does() -> None:
    """The static ccid formulation (fast-mode training) against the sub-batch (eval, the exact path's
    forward): without MoE and dropout the two modes compute the same thing, so they must agree on a
    batch with every kind of row: ccid history padded (gate forced to 0), g_ccid <= 0.05 (weight kept,
    vector zero: Q2) and kept."""
    hp = {**TINY, "model_type": "dual", "use_moe": "0", "dropout": "0", "fix_gate_history_rule": "true"}
    config = JobConfig.from_hyperparameters(hp)
    torch.manual_seed(0)
    model = build_model(config.model, fused_attention=True)
    inputs, _ = model_inputs(to_batch(generate(config.model, 12, seed=2), "dual"), config.model)
    inputs["key_padding_mask_ccid"][:3, :-2] = True  # rows 0-2: no ccid history
    g_ccid = torch.tensor([0.5, 0.5, 0.5, 0.03, 0.05, 0.04, 0.5, 0.051, 0.9, 0.2, 0.5, 0.01])
    model.gate_score = FixedGate(torch.stack([1 - g_ccid, g_ccid], dim=1))
    with torch.no_grad():
        static = model.train()(**inputs)
        sub_batch = model.eval()(**inputs)
    for mine, theirs in zip(static, sub_batch, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)

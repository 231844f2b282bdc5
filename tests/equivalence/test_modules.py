"""Our modules against the legacy golden fixtures: kinds `component` and `model`.

Run: .venv/bin/pytest tests/equivalence            (TSA_LEGACY_FIXTURES=<folder> for another set)

Tolerances (../shared/docs/legacy_tsa_fixtures.md §5): outputs rtol = atol = 1e-6; gradients
rtol 1e-5, atol 1e-6·max(1, G) with G the largest reference gradient of the case; parameters
the legacy left without gradient get none (or an all-zero one); the global RNG state after the
forward equals the legacy one (same randomness consumed); Top2Gating dispatch exactly equal.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.equivalence.fixtures import build, call, cases, grad_output, load
from tsa.legacy import load_legacy_state_dict

OUTPUT_TOL = {"rtol": 1e-6, "atol": 1e-6}
GRAD_RTOL = 1e-5
GRAD_ATOL_PER_UNIT = 1e-6
EXACT_OUTPUTS = {"dispatch_tensor"}


def run_case(fx: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Build, load, seed and run one fixture case exactly as its generator did."""
    module = build(fx["target"], fx["ctor_kwargs"])
    state = fx.get("state_dict") or {}
    if state:
        load_legacy_state_dict(module, state)
    module.train(fx["mode"] == "train")
    torch.manual_seed(fx["forward_seed"])
    return module, call(fx["target"], module, fx["inputs"])


def assert_outputs_match(fx: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
    assert set(outputs) == set(fx["outputs"])
    for name, expected in fx["outputs"].items():
        actual = outputs[name]
        assert not torch.isnan(actual).any(), f"{name} has NaN"
        if name in EXACT_OUTPUTS:
            assert torch.equal(actual, expected), f"{name} differs"
        else:
            torch.testing.assert_close(actual, expected, **OUTPUT_TOL, msg=lambda m, n=name: f"{n}: {m}")


def assert_gradients_match(fx: dict[str, Any], module: torch.nn.Module) -> None:
    expected = fx["grads"]
    scale = max([1.0] + [g.abs().max().item() for g in expected.values() if g.numel()])
    params = dict(module.named_parameters())
    for name, reference in expected.items():
        grad = params[name].grad
        assert grad is not None, f"{name}: legacy has a gradient, ours has none"
        torch.testing.assert_close(grad, reference, rtol=GRAD_RTOL, atol=GRAD_ATOL_PER_UNIT * scale,
                                   msg=lambda m, n=name: f"grad {n}: {m}")
    for name in fx["params_without_grad"]:
        grad = params[name].grad
        assert grad is None or not grad.any(), f"{name}: legacy has no gradient, ours does"
    assert set(expected) | set(fx["params_without_grad"]) == set(params), "parameter names differ from legacy"


@pytest.mark.parametrize("entry", cases("component", "model"))
def test_forward_outputs_and_rng_match_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    _, outputs = run_case(fx)
    assert_outputs_match(fx, outputs)
    assert torch.equal(torch.get_rng_state(), fx["rng_state_after_forward"]), "different global-RNG consumption"


def has_gradient_records(entry: dict[str, Any]) -> bool:
    """The legacy recorded gradients (train-mode model cases and parameter-free functions have none)."""
    fx = load(entry)
    return bool(fx["grads"] or fx["params_without_grad"])


def test_cases_without_gradient_records_are_train_mode_models_or_functions() -> None:
    for param in cases("component", "model"):
        fx = load(param.values[0])
        if not (fx["grads"] or fx["params_without_grad"]):
            assert (fx["kind"] == "model" and fx["mode"] == "train") or not fx.get("state_dict"), fx["case_id"]


@pytest.mark.parametrize("entry", [p for p in cases("component", "model") if has_gradient_records(p.values[0])])
def test_gradients_match_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    module, outputs = run_case(fx)
    outputs[grad_output(fx["target"])].sum().backward()
    assert_gradients_match(fx, module)

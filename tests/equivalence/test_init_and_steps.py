"""Stretch fixtures: legacy initialisation from a seed (kind `init`) and legacy training steps
(kind `train_step`).

Run: .venv/bin/pytest tests/equivalence/test_init_and_steps.py

init: every tensor of the freshly built model equal to the legacy one, and the same global-RNG
state after construction. train_step: losses rtol 1e-6, parameters atol 2·lr·steps (Adam turns
noise-level gradients into ±lr updates, ../shared/docs/legacy_tsa_spec.md §9), lr and betas
exact, RNG state after each step equal.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.equivalence.fixtures import build, cases, load
from tsa.config import TrainConfig
from tsa.legacy import load_legacy_state_dict
from tsa.models import select_loss
from tsa.training.optim import build_optimizer


@pytest.mark.parametrize("entry", cases("init"))
def test_seeded_construction_matches_legacy_init(entry: dict[str, Any]) -> None:
    fx = load(entry)
    torch.manual_seed(fx["init_seed"])
    model = build(fx["inner_target"], fx["ctor_kwargs"])
    assert torch.equal(torch.get_rng_state(), fx["rng_state_after_forward"]), "different RNG draws at init"
    state = model.state_dict()
    expected = fx["outputs"]["init_state_dict"]
    assert list(state) == list(expected), "state-dict keys or their order differ from legacy"
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize("entry", cases("train_step"))
def test_training_steps_match_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    model = build(fx["inner_target"], fx["ctor_kwargs"])
    load_legacy_state_dict(model, fx["state_dict"])
    args = fx["train_args"]
    train_cfg = TrainConfig(**{key: value for key, value in args.items() if key in TrainConfig.model_fields})
    optimizer, _ = build_optimizer(model.parameters(), train_cfg)
    loss_fn = select_loss(train_cfg)
    steps = fx["inputs"]["steps"]
    for step, (batch, seed) in enumerate(zip(steps, fx["inputs"]["step_seeds"], strict=True)):
        model.train()
        torch.manual_seed(seed)
        optimizer.zero_grad()
        scores, _ = model(**batch["model_inputs"])
        loss = loss_fn(scores, batch["y"], epoch=0, training=True)
        loss.backward()
        optimizer.step()
        torch.testing.assert_close(loss, fx["outputs"]["losses"][step], rtol=1e-6, atol=0)
        assert torch.equal(torch.get_rng_state(), fx["rng_state_after_each_step"][step])
    group = optimizer.param_groups[0]
    assert group["lr"] == fx["outputs"]["lr_used"]
    assert list(group["betas"]) == list(fx["outputs"]["betas_used"])
    atol = 2 * group["lr"] * len(steps)
    after = model.state_dict()
    for key, tensor in fx["outputs"]["state_dict_after"].items():
        torch.testing.assert_close(after[key], tensor, rtol=0, atol=atol, msg=lambda m, k=key: f"{k}: {m}")
    assert isinstance(loss_fn.criterion, nn.CrossEntropyLoss)

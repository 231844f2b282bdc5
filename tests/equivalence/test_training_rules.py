"""Legacy training rules against the fixtures: kinds `optim`, `metric`, `early_stopping`.

Run: .venv/bin/pytest tests/equivalence/test_training_rules.py

All exact (floats to 1e-12 relative), as ../shared/docs/legacy_tsa_fixtures.md §5 asks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.equivalence.fixtures import cases, load
from tsa.config import TrainConfig
from tsa.training.metrics import get_performance
from tsa.training.optim import build_optimizer
from tsa.training.selection import LegacyEarlyStopping

REL = 1e-12


@pytest.mark.parametrize("entry", cases("optim"))
def test_optimizer_and_schedule_match_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    fields = {key: value for key, value in fx["ctor_kwargs"].items() if key in TrainConfig.model_fields}
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(**fields))
    lrs, beta1s, beta2s = [], [], []
    for step in range(fx["inputs"]["n_scheduler_steps"] + 1):
        if step:
            optimizer.step()
            scheduler.step()
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        beta1s.append(group["betas"][0])
        beta2s.append(group["betas"][1])
    assert lrs == pytest.approx(fx["outputs"]["lr"], rel=REL, abs=0)
    assert beta1s == pytest.approx(fx["outputs"]["beta1"], rel=REL, abs=0)
    assert beta2s == pytest.approx(fx["outputs"]["beta2"], rel=REL, abs=0)
    group = optimizer.param_groups[0]
    for key, value in fx["outputs"]["param_group"].items():
        assert group[key] == pytest.approx(value, rel=REL, abs=0), key


@pytest.mark.parametrize("entry", cases("metric"))
def test_metrics_match_legacy_get_performance(entry: dict[str, Any]) -> None:
    fx = load(entry)
    measures = fx["ctor_kwargs"]["measures"]
    performance = get_performance(fx["inputs"]["score"], fx["inputs"]["label"], measures)
    assert performance == pytest.approx(fx["outputs"]["performance"], rel=REL, abs=0)


@pytest.mark.parametrize("entry", cases("early_stopping"))
def test_early_stopping_matches_legacy(entry: dict[str, Any]) -> None:
    fx = load(entry)
    stopper = LegacyEarlyStopping(patience=fx["ctor_kwargs"]["patience"])
    counter, early_stop, best = [], [], []
    for auc in fx["inputs"]["valid_auc"]:
        stopper.update(auc)
        counter.append(stopper.counter)
        early_stop.append(stopper.early_stop)
        best.append(stopper.best_score)
    assert counter == fx["outputs"]["counter"]
    assert early_stop == fx["outputs"]["early_stop"]
    assert best == pytest.approx(fx["outputs"]["best_score"], rel=REL, abs=0)

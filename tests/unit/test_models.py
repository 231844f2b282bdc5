"""The opt-in fixes of legacy quirks (Q1, Q4, Q9, Q18): off by default, and what each changes.

Run: .venv/bin/pytest tests/unit/test_models.py
"""

from __future__ import annotations

import pytest
import torch

from tests.inputs import SMALL_MODEL, dual_inputs, single_inputs
from tsa.config import ModelConfig, TrainConfig
from tsa.models import build_model, select_loss
from tsa.models.blocks import FeatureAggregation, aggregation_widths


def test_fixes_are_off_by_default() -> None:
    cfg = ModelConfig(n_cat_features=40, n_num_features=33, n_embedding=120)
    train = TrainConfig()
    assert not (cfg.fix_gate_history_rule or cfg.fix_moe_eval_deterministic or cfg.fix_feature_aggregation_widths)
    assert not (train.fix_loss_selection or train.fix_loss_reduction)


@pytest.mark.parametrize(("fix", "forced"), [(False, False), (True, True)])
def test_q1_gate_history_rule(fix: bool, forced: bool) -> None:
    cfg = ModelConfig(model_type="dual", use_moe=False, fix_gate_history_rule=fix, **SMALL_MODEL)
    model = build_model(cfg).eval()
    history_rows = cfg.seq_len - 1
    # row 0: ccid holds only the current order (every history row padded); row 1: full ccid history
    kpm = dual_inputs(cfg, [history_rows, 0])["key_padding_mask_ccid"]
    assert model.no_ccid_history(kpm).tolist() == [forced, False]


def test_q1_legacy_literal_fires_only_on_51_row_data() -> None:
    cfg = ModelConfig(model_type="dual", use_moe=False, **{**SMALL_MODEL, "seq_len": 51})
    model = build_model(cfg)
    kpm = dual_inputs(cfg, [50, 51, 0])["key_padding_mask_ccid"]
    assert model.no_ccid_history(kpm).tolist() == [True, False, False]  # fully padded (51) is not forced


@pytest.mark.parametrize(("fix", "ccid_rows_encoded"), [(False, 2), (True, 0)])
def test_q1_fix_skips_the_ccid_encoder_for_rows_without_history(fix: bool, ccid_rows_encoded: int) -> None:
    cfg = ModelConfig(model_type="dual", use_moe=False, fix_gate_history_rule=fix, **SMALL_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen: list[int] = []
    model.order_attention_ccid.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    with torch.no_grad():
        model(**dual_inputs(cfg, [cfg.seq_len - 1, cfg.seq_len - 1]))
    assert sum(seen) == ccid_rows_encoded


def _moe_model(fix: bool) -> torch.nn.Module:
    cfg = ModelConfig(use_moe=True, num_experts=3, fix_moe_eval_deterministic=fix, **SMALL_MODEL)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_q4_legacy_eval_consumes_randomness() -> None:
    model = _moe_model(fix=False)
    inputs = single_inputs(model.config)
    state = torch.get_rng_state()
    with torch.no_grad():
        model(**inputs)
    assert not torch.equal(torch.get_rng_state(), state)


def test_q4_fix_makes_eval_deterministic_and_rng_free() -> None:
    model = _moe_model(fix=True)
    inputs = single_inputs(model.config)
    state = torch.get_rng_state()
    with torch.no_grad():
        first = model(**inputs)[0]
        torch.manual_seed(123)
        second = model(**inputs)[0]
    torch.manual_seed(0)
    assert torch.equal(first, second)
    torch.set_rng_state(state)
    with torch.no_grad():
        model(**inputs)
    assert torch.equal(torch.get_rng_state(), state)


def test_q9_widths_by_hand() -> None:
    assert aggregation_widths(20) == [20, 10, 5, 2, 1, 0, 1]
    assert aggregation_widths(20, floor_widths=True) == [20, 10, 5, 2, 1, 1, 1]
    assert aggregation_widths(64) == [64, 32, 16, 8, 4, 2, 1]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize(("fix", "uses_input"), [(False, False), (True, True)])
def test_q9_degenerate_aggregation_ignores_its_input_unless_fixed(fix: bool, uses_input: bool) -> None:
    torch.manual_seed(0)
    block = FeatureAggregation(20, floor_widths=fix)
    x = torch.randn(3, 20)
    assert (not torch.equal(block(x), block(x + 1.0))) is uses_input


def test_q18_legacy_bce_and_cyclical_crash_as_in_legacy() -> None:
    scores, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    with pytest.raises(ValueError):
        select_loss(TrainConfig(loss="BCEWithLogitsLoss"))(scores, y, epoch=0, training=True)
    cyclical = select_loss(TrainConfig(loss="Cyclical_FocalLoss"))
    cyclical(scores, y, epoch=0, training=True)
    with pytest.raises(TypeError):
        cyclical(scores, y, epoch=0, training=False)


def test_q18_fixed_bce_uses_one_hot_targets() -> None:
    scores, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    loss = select_loss(TrainConfig(loss="BCEWithLogitsLoss", fix_loss_selection=True))(scores, y, 0, True)
    p = torch.sigmoid(scores)
    target = torch.stack([1 - y, y], dim=1).float()
    by_hand = -(target * p.log() + (1 - target) * (1 - p).log()).sum()
    torch.testing.assert_close(loss, by_hand)


def test_q18_fixed_cyclical_gets_the_epoch_in_validation() -> None:
    scores, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    loss = select_loss(TrainConfig(loss="Cyclical_FocalLoss", fix_loss_selection=True, max_epoch=10))
    torch.testing.assert_close(loss(scores, y, epoch=3, training=False), loss(scores, y, epoch=3, training=True))


def test_q18_mean_reduction_is_opt_in() -> None:
    scores, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    summed = select_loss(TrainConfig())(scores, y, 0, True)
    mean = select_loss(TrainConfig(fix_loss_reduction=True, loss_reduction="mean"))(scores, y, 0, True)
    by_hand = -torch.log_softmax(scores, dim=1)[torch.arange(8), y]
    torch.testing.assert_close(summed, by_hand.sum())
    torch.testing.assert_close(mean, by_hand.mean())


@pytest.mark.parametrize("model_type", ["single", "dual"])
def test_models_build_from_config_and_return_scores_and_ensemble(model_type: str) -> None:
    cfg = ModelConfig(model_type=model_type, **SMALL_MODEL)
    model = build_model(cfg).eval()
    inputs = single_inputs(cfg) if model_type == "single" else dual_inputs(cfg, [0, 1, 5, 2])
    with torch.no_grad():
        scores, ensemble = model(**inputs)
    assert scores.shape == (4, 2) and ensemble.shape == (4, 3 * cfg.dim_embedding_table)


def test_the_capacity_one_hot_is_the_legacy_truncated_one_hot() -> None:
    """The MoE slot one-hot without a host read equals legacy's one_hot(width max+1)[..., :capacity],
    slots past the capacity (all-zero rows) included."""
    from tsa.models.moe import _safe_one_hot

    slots = torch.randint(0, 40, (51, 16), generator=torch.Generator().manual_seed(0))
    for capacity in (4, 10, 39, 64):
        legacy = torch.nn.functional.one_hot(slots, max(capacity, int(slots.max()) + 1))[..., :capacity]
        mine = _safe_one_hot(slots, capacity)
        assert mine.dtype == legacy.dtype and torch.equal(mine, legacy)

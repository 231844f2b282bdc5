"""Hyperparameter decoding and validation (`tsa.config`).

Run: .venv/bin/pytest tests/unit/test_config.py
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from tests.conftest import HYPERPARAMETERS_DIR, load_example
from tests.inputs import REQUIRED_HP
from tsa.cli import main as cli_main
from tsa.config import JobConfig, json_schema, typed_hyperparameters
from tsa.contract import encode_hyperparameters
from tsa.errors import ConfigError

NOT_EXAMPLES = ("schema", "metric_definitions", "tuning_ranges")
EXAMPLES = sorted(p.stem for p in HYPERPARAMETERS_DIR.glob("*.json") if p.stem not in NOT_EXAMPLES)


@pytest.mark.parametrize("encoding", ["str", "json", "v3"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_resolves_identically_in_every_launcher_encoding(example: str, encoding: str) -> None:
    raw = load_example(example)
    expected = JobConfig.from_hyperparameters(raw).resolved()
    wire = encode_hyperparameters(typed_hyperparameters(raw), encoding)  # type: ignore[arg-type]
    assert all(isinstance(v, str) for v in wire.values())
    assert JobConfig.from_hyperparameters(wire).resolved() == expected


@pytest.mark.parametrize("example", EXAMPLES)
def test_tsa_validate_prints_the_same_config_for_every_encoding(example: str, tmp_path, capsys) -> None:
    printed = []
    for encoding in ("str", "json", "v3"):
        path = tmp_path / f"{encoding}.json"
        path.write_text(json.dumps(encode_hyperparameters(typed_hyperparameters(load_example(example)), encoding)))
        assert cli_main(["validate", str(path)]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0] == printed[1] == printed[2]
    assert printed[0]["runtime"]["test_name"] == load_example(example)["test_name"]


def test_examples_hold_the_production_values_of_legacy_contracts() -> None:
    eu = JobConfig.from_hyperparameters(load_example("eu_single"))
    na = JobConfig.from_hyperparameters(load_example("na_dual"))
    assert (eu.model.model_type, eu.model.n_cat_features, eu.model.n_num_features) == ("single", 108, 51)
    assert (eu.model.n_embedding, eu.model.n_engineered_num_features, eu.train.batch_size) == (2403, 413, 800)
    assert (na.model.model_type, na.model.n_cat_features, na.model.n_num_features) == ("dual", 109, 67)
    assert (na.model.n_embedding, na.model.n_engineered_num_features, na.train.batch_size) == (2070, 297, 640)
    for cfg in (eu, na):
        assert cfg.runtime.use_amp and cfg.runtime.precision is None  # 16-mixed on GPU: the run plan
        assert (cfg.train.max_epoch, cfg.train.patience, cfg.train.scheduler_maxlr) == (100, 5, 5e-4)
        assert (cfg.model.dim_embedding_table, cfg.model.n_layers_order, cfg.model.n_layers_feature) == (64, 6, 4)


def test_schema_json_is_current() -> None:
    shipped = json.loads((HYPERPARAMETERS_DIR / "schema.json").read_text())
    assert shipped == json_schema(), "hyperparameters/schema.json is stale: run `make schema`"


def test_shipped_metric_definitions_are_the_packaged_ones() -> None:
    shipped = (HYPERPARAMETERS_DIR / "metric_definitions.json").read_text()
    assert shipped == resources.files("tsa").joinpath("metric_definitions.json").read_text(), "run `make schema`"


def test_string_field_keeps_numeric_text() -> None:
    cfg = JobConfig.from_hyperparameters({**REQUIRED_HP, "test_name": "123", "data_version": "007"})
    assert cfg.runtime.test_name == "123"
    assert cfg.data.data_version == "007"


def test_string_field_drops_one_layer_of_json_quotes() -> None:
    cfg = JobConfig.from_hyperparameters({**REQUIRED_HP, "test_name": '"my-run"'})
    assert cfg.runtime.test_name == "my-run"


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("True", True), ("1", True), (1, True),
                                                ("false", False), ("False", False), ("0", False), ('"true"', True)])
def test_bool_field_accepts_every_launcher_spelling(text: object, expected: bool) -> None:
    assert JobConfig.from_hyperparameters({**REQUIRED_HP, "use_time_seq": text}).model.use_time_seq is expected


def test_bool_field_rejects_prose() -> None:
    with pytest.raises(ConfigError, match="'use_time_seq' = 'yes please'"):
        JobConfig.from_hyperparameters({**REQUIRED_HP, "use_time_seq": "yes please"})


def test_numbers_accept_json_and_str_forms() -> None:
    cfg = JobConfig.from_hyperparameters({**REQUIRED_HP, "lr": "5e-05", "batch_size": '"800"', "dropout": 0.2})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.model.dropout) == (5e-5, 800, 0.2)


def test_legacy_modelname_maps_to_model_type() -> None:
    dual = JobConfig.from_hyperparameters({**REQUIRED_HP, "modelname": "TwoSeqMoEOrderFeature"})
    assert dual.model.model_type == "dual"
    assert JobConfig.from_hyperparameters({**REQUIRED_HP, "num_seq": "2"}).model.model_type == "dual"


def test_selectors_that_disagree_are_rejected() -> None:
    with pytest.raises(ConfigError, match="disagree"):
        JobConfig.from_hyperparameters({**REQUIRED_HP, "modelname": "OrderFeature", "model_type": "dual"})


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'n_layers_order'"):
        JobConfig.from_hyperparameters({**REQUIRED_HP, "n_layer_order": "6"})


def test_reserved_sagemaker_keys_are_ignored() -> None:
    raw = {**REQUIRED_HP, "sagemaker_program": '"x.py"', "sagemaker_region": '"eu-west-1"',
           "_tuning_objective_metric": "auc"}
    assert JobConfig.from_hyperparameters(raw) == JobConfig.from_hyperparameters(REQUIRED_HP)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig.from_hyperparameters({**REQUIRED_HP, "dropout": "2", "batch_size": "x", "bogus": "1"})
    assert len(info.value.problems) == 3
    assert "2 more problem(s)" in str(info.value).splitlines()[0]


def test_legacy_defaults_are_the_train_py_defaults() -> None:
    cfg = JobConfig.from_hyperparameters(REQUIRED_HP)
    assert (cfg.model.dim_embedding_table, cfg.model.dim_attn_feedforward, cfg.model.num_heads) == (128, 64, 1)
    assert (cfg.model.use_moe, cfg.model.num_experts, cfg.model.n_layers_feature) == (True, 1, 6)
    assert (cfg.train.batch_size, cfg.train.max_epoch) == (1024, 70)
    assert (cfg.train.lr, cfg.train.scheduler_maxlr) == (1e-5, 1e-3)
    assert (cfg.train.patience, cfg.train.seed, cfg.runtime.use_amp, cfg.runtime.precision) == (10, 0, False, None)


def test_no_caps_on_production_scale() -> None:
    cfg = JobConfig.from_hyperparameters({**REQUIRED_HP, "batch_size": "800", "max_epoch": "100"})
    assert (cfg.train.batch_size, cfg.train.max_epoch) == (800, 100)


def test_repaired_losses_need_their_flag() -> None:
    cfg = JobConfig.from_hyperparameters({**REQUIRED_HP, "loss": "Cyclical_FocalLoss", "fix_loss_selection": "true"})
    assert cfg.train.loss == "Cyclical_FocalLoss"

"""The served model: what the handler builds from a model folder equals the trained model, bit for bit.

The folder is written by the job's own export functions (`config.json`, the state dict
`<test_name>.pt`, `code/` with the package `tsa.models` copied to `code/tsa_models/`); `model_fn`
of the handler copied there builds the plain module from it. Both are called with two batch sizes:
the MoE capacity and the dual model's ccid sub-batch are decided at run time. Where the MoE draws
random numbers in eval (legacy policy, quirk Q4) the global RNG is re-seeded before each call, and
the served module must consume the same randomness. The handler and its model code also load in a
process where `import tsa` fails. Under an older torch: tests/deploy (`make test-deploy`).

Run: .venv/bin/pytest tests/unit/test_served_model.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.inputs import sequence
from tests.jobs import load_handler
from tsa.artifacts import write_serving
from tsa.config import JobConfig, ModelConfig
from tsa.legacy import legacy_state_dict
from tsa.models import build_model
from tsa.weights import save_weights, write_torch

TINY = dict(n_cat_features=33, n_num_features=32, n_embedding=100, seq_len=6, dim_embedding_table=4,
            dim_attn_feedforward=8, num_heads=2, n_layers_order=1, n_layers_feature=1)
ALL_FIXES = dict(fix_gate_history_rule=True, fix_moe_eval_deterministic=True, fix_feature_aggregation_widths=True)
BATCH_SIZES = (12, 1)  # 1 row: where the Q1 rule fires, the dual model skips its ccid encoder
FORWARD_SEED = 7

CONFIGS = {
    "single-moe1-time-bias-eng": dict(model_type="single", use_moe=True, num_experts=1, n_engineered_num_features=2),
    "single-moe3-fixed-notime-nobias-eng": dict(model_type="single", use_moe=True, num_experts=3, use_time_seq=False,
                                                emb_tbl_use_bias=False, n_engineered_num_features=2, **ALL_FIXES),
    "single-moe3-legacy-time-bias-noeng": dict(model_type="single", use_moe=True, num_experts=3),
    "single-ffn-notime-bias-noeng": dict(model_type="single", use_moe=False, use_time_seq=False),
    # 51-row data: the legacy Q1 rule (exactly 50 padded ccid positions) fires
    "dual-moe3-legacy-time-bias-eng-51rows": dict(model_type="dual", use_moe=True, num_experts=3,
                                                  n_engineered_num_features=2, seq_len=51),
    "dual-moe3-legacy-notime-nobias-eng": dict(model_type="dual", use_moe=True, num_experts=3, use_time_seq=False,
                                               emb_tbl_use_bias=False, n_engineered_num_features=3),
    "dual-moe1-fixed-notime-nobias-noeng": dict(model_type="dual", use_moe=True, num_experts=1, use_time_seq=False,
                                                emb_tbl_use_bias=False, **ALL_FIXES),
    "dual-ffn-fixed-time-bias-eng": dict(model_type="dual", use_moe=False, n_engineered_num_features=2,
                                         fix_gate_history_rule=True),
}


def model_inputs(cfg: ModelConfig, b: int) -> tuple[torch.Tensor | None, ...]:
    """Positional forward arguments as the serving handler builds them (engineered None when there are none);
    dual: ccid rows alternate only-the-current-order and full history."""
    g = torch.Generator().manual_seed(b)
    history = cfg.seq_len - 1
    cid = sequence(cfg, b, [i % cfg.seq_len for i in range(b)], g)
    time_cid = cid["time"] if cfg.use_time_seq else None  # the serving handler sends no time then
    engineered = torch.rand(b, cfg.n_engineered_num_features, generator=g, dtype=torch.float64)
    engineered = engineered if cfg.n_engineered_num_features > 0 else None
    if cfg.model_type == "single":
        return cid["x_cat"], cid["x_num"], engineered, time_cid, None, cid["kpm"]
    ccid = sequence(cfg, b, [history if i % 2 == 0 else 0 for i in range(b)], g)
    time_ccid = ccid["time"] if cfg.use_time_seq else None
    return (cid["x_cat"], cid["x_num"], time_cid, ccid["x_cat"], ccid["x_num"], time_ccid, engineered, None,
            cid["kpm"], ccid["kpm"])


def seeded_forward(
    model: torch.nn.Module, inputs: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, ensemble, global RNG state after the call), from a fixed seed."""
    torch.manual_seed(FORWARD_SEED)
    with torch.no_grad():
        scores, ensemble = model(*inputs)
    return scores, ensemble, torch.get_rng_state()


@pytest.fixture(params=list(CONFIGS.values()), ids=list(CONFIGS))
def eager_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **request.param})).eval()


def model_folder(model: torch.nn.Module, folder: Path, fast_mode: bool = False) -> Path:
    """The serving part of a job's model folder, written by the job's export functions."""
    config = JobConfig.from_hyperparameters({**model.config.model_dump(), "test_name": "served",
                                             "fast_mode": fast_mode})
    save_weights(model, config, folder)
    write_torch(legacy_state_dict(model), folder / "served.pt")
    write_serving(folder)
    return folder


def test_served_model_equals_the_trained_model(eager_model: torch.nn.Module, tmp_path: Path) -> None:
    folder = model_folder(eager_model, tmp_path / "model")
    served = load_handler(folder).model_fn(str(folder))["model"]
    assert not served.training
    assert type(served).__module__.startswith("tsa_models_"), "built from the folder's copy of the model code"
    for b in BATCH_SIZES:
        inputs = model_inputs(eager_model.config, b)
        expected = seeded_forward(eager_model, inputs)
        scores, ensemble, rng_state = seeded_forward(served, inputs)
        assert torch.equal(scores, expected[0]) and torch.equal(ensemble, expected[1])
        assert torch.equal(rng_state, expected[2]), "served model consumes different randomness"


BLOCKED_TSA = """
import importlib.util, sys
sys.modules["tsa"] = None  # `import tsa` fails
spec = importlib.util.spec_from_file_location("inference", sys.argv[1])
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
print(type(handler.model_fn(sys.argv[2])["model"]).__name__)
"""


def test_the_handler_and_its_model_code_load_without_the_tsa_package(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, **CONFIGS["dual-moe3-legacy-notime-nobias-eng"]}))
    folder = model_folder(model, tmp_path / "model")
    proc = subprocess.run([sys.executable, "-c", BLOCKED_TSA, str(folder / "code/inference.py"), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "DualSequenceTSA"


def test_dual_inputs_exercise_both_gate_paths() -> None:
    """The dual cases with a firing rule run the ccid encoder on a strict sub-batch (some gates forced to 0)."""
    for name in ("dual-moe3-legacy-time-bias-eng-51rows", "dual-ffn-fixed-time-bias-eng"):
        cfg = ModelConfig(**{**TINY, **CONFIGS[name]})
        model = build_model(cfg).eval()
        kpm_ccid = model_inputs(cfg, BATCH_SIZES[0])[-1]
        forced = model.no_ccid_history(kpm_ccid)
        assert forced.any() and not forced.all(), name


def test_a_fast_mode_model_is_served_with_the_fused_attention_it_scored_with(tmp_path: Path) -> None:
    cfg = ModelConfig(**{**TINY, **CONFIGS["dual-moe1-fixed-notime-nobias-noeng"]})
    torch.manual_seed(0)
    model = build_model(cfg, fused_attention=True).eval()
    folder = model_folder(model, tmp_path / "model", fast_mode=True)
    served = load_handler(folder).model_fn(str(folder))["model"]
    assert served.feature_attention.fused
    inputs = model_inputs(cfg, BATCH_SIZES[0])
    assert torch.equal(seeded_forward(served, inputs)[0], seeded_forward(model, inputs)[0])

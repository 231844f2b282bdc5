"""GPU checks (`make gpu-check` on a lent GPU machine): CUDA forward/backward, AMP, a 1-GPU job.

Run: .venv/bin/pytest -m gpu tests/unit/test_gpu.py
Skipped where no CUDA device is visible (CI and the dev machines have none: nothing to run on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.inputs import SMALL_MODEL, dual_inputs, single_inputs
from tests.jobs import TINY, make_job, metrics, run_job
from tsa.config import ModelConfig
from tsa.models import build_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def inputs_for(cfg: ModelConfig) -> dict:
    return single_inputs(cfg) if cfg.model_type == "single" else dual_inputs(cfg, [0, 1, 5, 2])


@pytest.mark.parametrize("model_type", ["single", "dual"])
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_forward_backward_matches_cpu(model_type: str, fused: bool) -> None:
    cfg = ModelConfig(model_type=model_type, use_moe=False, **SMALL_MODEL)
    torch.manual_seed(0)
    cpu_model = build_model(cfg, fused_attention=fused).eval()
    gpu_model = build_model(cfg, fused_attention=fused).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    inputs = inputs_for(cfg)
    gpu_inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    cpu_scores, _ = cpu_model(**inputs)
    gpu_scores, _ = gpu_model(**gpu_inputs)
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, rtol=1e-4, atol=1e-4)
    cpu_scores.sum().backward()
    gpu_scores.sum().backward()
    for (name, a), (_, b) in zip(cpu_model.named_parameters(), gpu_model.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_training_step_is_finite(dtype: torch.dtype) -> None:
    cfg = ModelConfig(use_moe=False, **SMALL_MODEL)
    model = build_model(cfg, fused_attention=dtype == torch.bfloat16).cuda().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in single_inputs(cfg).items()}
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    for _ in range(3):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            scores, _ = model(**inputs)
            loss = torch.nn.functional.cross_entropy(scores.float(), y, reduction="sum")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss)


@pytest.mark.parametrize("extra", [{"use_amp": "1"}, {"fast_mode": "1"}], ids=["legacy_amp", "fast_mode"])
def test_one_gpu_job_trains_and_exports(tmp_path: Path, extra: dict[str, str]) -> None:
    root = make_job(tmp_path / "job", {**TINY, **extra})
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 gpu process(es)" in proc.stdout
    assert (root / "model/code/tsa_models/tsa.py").is_file() and metrics(root)["best_validation_auc"] > 0.5

"""Training-throughput benchmark (not a test): exact vs fast mode at the production configs.

    .venv/bin/python bench/model_step.py [--device cpu|cuda] [--steps N] [--configs eu,na]

For each config (`eu`: hyperparameters/eu_single.json, `na`: na_dual.json) and mode
(`exact`: the legacy-faithful path, fp32 or the production fp16 AMP on GPU; `fast`: fused
attention + bf16 autocast + torch.compile on GPU), it times one training step (forward, the
legacy CE(sum) loss, backward, Adam step):

- `model_step`: a batch already on the device, the same batch every step;
- `full_loop`: batches through the project's real data path (memory-mapped `.npy` channel ->
  `BatchStream` -> pinned, non-blocking copy to the device) and the step.

With `LEGACY_TSA_DIR` pointing at the legacy scripts (never vendored) it also times the legacy
model's `model_step` in the same run. FLOPs per sample come from `torch.utils.flop_counter` on a
forward+backward; utilisation is achieved FLOP/s over the chip's bf16 dense peak (GPU only).
Output: one JSON object per line, then one summary line with the fast/exact ratios. Batch sizes
are the production ones on GPU (800 / 640) and small on CPU, where fewer steps are timed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import model_inputs, open_channel, to_batch
from tsa.data.convert import write_npy_channel
from tsa.data.loader import BatchStream, configure_allocator, make_loader
from tsa.data.sharding import ShardSpec
from tsa.data.synth import generate
from tsa.models import build_model
from tsa.training.plan import precision_for

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"eu": "eu_single.json", "na": "na_dual.json"}
GPU_BATCH = {"eu": 800, "na": 640}
CPU_BATCH = 16
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def job_config(name: str, fast: bool) -> JobConfig:
    raw = json.loads((ROOT / "hyperparameters" / CONFIGS[name]).read_text())
    if fast:
        raw["fast_mode"] = "true"
    return JobConfig.from_hyperparameters(raw)


def autocast(config: JobConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    precision = precision_for(config.runtime, on_gpu=device.type == "cuda")
    if device.type == "cuda" and precision == "16-mixed":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Step:
    """One legacy training step of a model, as the training loop runs it."""

    def __init__(self, model: nn.Module, config: JobConfig, device: torch.device, compiled: bool) -> None:
        self.model, self.config, self.device = model.to(device).train(), config, device
        self.forward = torch.compile(model.forward) if compiled else model.__call__
        self.optimizer = torch.optim.Adam(model.parameters(), lr=4e-5, fused=device.type == "cuda")
        fp16 = precision_for(config.runtime, on_gpu=device.type == "cuda") == "16-mixed"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.loss = nn.CrossEntropyLoss(reduction="sum")

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        inputs, y = model_inputs(batch, self.config.model)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.config, self.device):
            scores, _ = self.forward(**inputs)
            loss = self.loss(scores.float(), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def synthetic_batch(config: JobConfig, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    arrays = generate(config.model, batch_size, seed=0)
    return {k: v.to(device, non_blocking=True) for k, v in to_batch(arrays, config.model.model_type).items()}


def flops_per_sample(config: JobConfig, device: torch.device) -> float:
    model = build_model(config.model).to(device).train()
    batch = synthetic_batch(config, 4, device)
    inputs, y = model_inputs(batch, config.model)
    counter = FlopCounterMode(display=False)
    with counter:
        scores, _ = model(**inputs)
        nn.CrossEntropyLoss(reduction="sum")(scores, y).backward()
    return counter.get_total_flops() / 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[dict[str, torch.Tensor]], None], batches: Iterator[dict[str, torch.Tensor]],
          warmup: int, steps: int, device: torch.device) -> tuple[int, float]:
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    start, samples = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        step(batch)
        samples += len(batch["y"])
    sync(device)
    return samples, time.perf_counter() - start


def device_batches(config: JobConfig, batch_size: int, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    batch = synthetic_batch(config, batch_size, device)
    while True:
        yield batch


def loader_batches(folder: Path, config: JobConfig, batch_size: int,
                   device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    source = open_channel(Channel("train", folder), config)
    stream = BatchStream(source, config.model.model_type, batch_size, ShardSpec(shuffle=True, pad=True))
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        for batch in make_loader(stream, num_workers=0, pin_memory=device.type == "cuda"):
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        epoch += 1


def legacy_step(config: JobConfig, device: torch.device) -> Step | None:
    """The legacy model (from LEGACY_TSA_DIR, never vendored), stepped like ours."""
    legacy_dir = os.environ.get("LEGACY_TSA_DIR")
    if not legacy_dir:
        return None
    sys.path.insert(0, legacy_dir)
    models = importlib.import_module("models")
    m = config.model
    kwargs = dict(n_cat_features=m.n_cat_features, n_num_features=m.n_num_features, n_classes=m.n_classes,
                  n_embedding=m.n_embedding, seq_len=m.seq_len, n_engineered_num_features=m.n_engineered_num_features,
                  dim_embedding_table=m.dim_embedding_table, dim_attn_feedforward=m.dim_attn_feedforward,
                  num_heads=m.num_heads, dropout=m.dropout, n_layers_order=m.n_layers_order,
                  n_layers_feature=m.n_layers_feature, emb_tbl_use_bias=int(m.emb_tbl_use_bias),
                  use_moe=int(m.use_moe), num_experts=m.num_experts, use_time_seq=int(m.use_time_seq))
    if m.model_type == "single":
        model = models.OrderFeatureAttentionClassifier(use_mlp=0, **kwargs)
    else:
        model = models.TwoSeqMoEOrderFeatureAttentionClassifier(**kwargs)
    return Step(model, config, device, compiled=False)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in BF16_PEAK_TFLOPS.items() if chip in name), None)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    warmup, steps = (5, args.steps or 30) if gpu else (1, args.steps or 3)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            batch_size = GPU_BATCH[name] if gpu else CPU_BATCH
            exact = job_config(name, fast=False)
            folder = Path(tmp) / name
            write_npy_channel(folder, "train", "v0", generate(exact.model, batch_size * (warmup + steps + 1), 1))
            gflop = flops_per_sample(exact, device) / 1e9
            modes: list[tuple[str, JobConfig, Step | None]] = [
                ("exact", exact, Step(build_model(exact.model), exact, device, compiled=False)),
                ("fast", job_config(name, fast=True), None),
                ("legacy", exact, legacy_step(exact, device)),
            ]
            for mode, config, step in modes:
                if mode == "fast":
                    step = Step(build_model(config.model, fused_attention=True), config, device, compiled=gpu)
                if step is None:
                    continue
                paths = [("model_step", device_batches(config, batch_size, device))]
                if mode != "legacy":
                    paths.append(("full_loop", loader_batches(folder, config, batch_size, device)))
                for path, batches in paths:
                    samples, seconds = timed(step, batches, warmup, steps, device)
                    rate = samples / seconds
                    peak = peak_tflops(device)
                    result = {"config": name, "mode": mode, "path": path, "device": str(
                        torch.cuda.get_device_name(device) if gpu else "cpu"), "batch_size": batch_size,
                              "steps": steps, "samples_per_s": round(rate, 1), "gflop_per_sample": round(gflop, 3),
                              "achieved_tflops": round(rate * gflop / 1e3, 3),
                              "utilisation": round(rate * gflop / 1e3 / peak, 4) if peak else None}
                    print(json.dumps(result), flush=True)
                    results.append(result)
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    rate = {(r["config"], r["mode"], r["path"]): r["samples_per_s"] for r in results}
    ratios = {}
    for (config, mode, path), value in rate.items():
        if mode != "exact" and (config, "exact", path) in rate:
            ratios[f"{config}_{path}_{mode}_over_exact"] = round(value / rate[(config, "exact", path)], 2)
    return {"bench": "model_step_summary", **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per measurement (default 30 GPU, 3 CPU)")
    parser.add_argument("--configs", default="eu,na")
    args = parser.parse_args()
    configure_allocator()
    torch.manual_seed(0)
    print(json.dumps(summary(run(args))), flush=True)


if __name__ == "__main__":
    main()

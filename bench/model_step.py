"""Training-throughput benchmark (not a test): exact vs fast mode at the production configs.

    .venv/bin/python bench/model_step.py [--device cpu|cuda] [--rounds N] [--configs eu,na]

For each config (`eu`: hyperparameters/eu_single.json, `na`: na_dual.json) and mode
(`exact`: the legacy-faithful path, fp32 or the production fp16 AMP on GPU; `fast`: fused
attention + bf16 autocast + torch.compile on GPU), it times training steps (forward, the
legacy CE(sum) loss, backward, Adam step) on two paths:

- `model_step`: a batch already on the device, the same batch every step;
- `full_loop`: batches through the project's real data path (memory-mapped `.npy` channel ->
  `BatchStream` -> pinned, non-blocking copy to the device) and the step;
- `front_end`: only the order rows' embedding gather and feature aggregation (`embed_rows` of every
  order encoder, forward and backward), with `share_of_step`: its time over the `model_step` time,
  median over rounds.

With `LEGACY_TSA_DIR` pointing at the legacy scripts (never vendored) it also times the legacy
model's `model_step`. The variants are interleaved: after warm-up, each round times
`--steps-per-round` steps of every (mode, path) in turn, so a noisy shared machine slows all of
them alike within a round. Each line reports the median rate over rounds and `ratio_to_exact`, the
median over rounds of the per-round rate over the exact mode's on the same path. FLOPs per sample
come from `torch.utils.flop_counter` on a forward+backward; utilisation is achieved FLOP/s over the
chip's bf16 dense peak (GPU only). Output: one JSON object per line, then one summary line with the
ratios. Batch sizes are the production ones on GPU (800 / 640) and 16 on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
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


class FrontEnd:
    """Forward and backward of the order encoders' front ends alone (`OrderAttentionLayer.embed_rows`)."""

    def __init__(self, model: nn.Module, config: JobConfig) -> None:
        self.model, self.config = model, config

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        inputs, _ = model_inputs(batch, self.config.model)
        if self.config.model.model_type == "single":
            pairs = [(self.model.order_attention, inputs["x_cat"], inputs["x_num"])]
        else:
            cid, ccid = (inputs["x_seq_cat_cid"], inputs["x_seq_num_cid"]), (inputs["x_seq_cat_ccid"],
                                                                              inputs["x_seq_num_ccid"])
            pairs = [(self.model.order_attention_cid, *cid), (self.model.order_attention_ccid, *ccid),
                     (self.model.gate_emb, *cid), (self.model.gate_emb, *ccid)]
        self.model.zero_grad(set_to_none=True)
        with autocast(self.config, next(self.model.parameters()).device):
            total = sum(encoder.embed_rows(x_cat, x_num).float().sum() for encoder, x_cat, x_num in pairs)
        total.backward()


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


class Cell:
    """One (mode, path) of a config: its step, its batches and the rate of every timed round."""

    def __init__(self, mode: str, path: str, step: Step, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        self.mode, self.path, self.step, self.batches = mode, path, step, batches
        self.rates: list[float] = []

    def run(self, steps: int, device: torch.device, record: bool = True) -> None:
        batches = [next(self.batches) for _ in range(steps)] if self.path == "model_step" else None
        sync(device)
        start, samples = time.perf_counter(), 0
        for index in range(steps):
            batch = batches[index] if batches is not None else next(self.batches)  # full_loop: loading is timed
            self.step(batch)
            samples += len(batch["y"])
        sync(device)
        if record:
            self.rates.append(samples / (time.perf_counter() - start))


def interleaved(cells: list[Cell], warmup: int, rounds: int, steps: int, device: torch.device) -> None:
    """Warm every cell up, then `rounds` rounds of `steps` steps of each cell in turn."""
    for cell in cells:
        cell.run(warmup, device, record=False)
    for _ in range(rounds):
        for cell in cells:
            cell.run(steps, device)


def ratio_to_exact(cell: Cell, cells: list[Cell]) -> float | None:
    """Median over rounds of this cell's rate over the exact mode's on the same path, same round."""
    exact = next((c for c in cells if c.mode == "exact" and c.path == cell.path), None)
    if exact is None:
        return None
    return statistics.median(mine / theirs for mine, theirs in zip(cell.rates, exact.rates, strict=True))


def device_batches(config: JobConfig, batch_size: int, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    batch = synthetic_batch(config, batch_size, device)
    while True:
        yield batch


def loader_batches(folder: Path, config: JobConfig, batch_size: int,
                   device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    source = open_channel(Channel("train", folder), config.data, config.model)
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


def cells_for(name: str, folder: Path, batch_size: int, device: torch.device) -> list[Cell]:
    """The (mode, path) cells of one config: exact and fast on both paths, legacy on `model_step`."""
    exact, fast = job_config(name, fast=False), job_config(name, fast=True)
    gpu = device.type == "cuda"
    steps = {"exact": (exact, Step(build_model(exact.model), exact, device, compiled=False)),
             "fast": (fast, Step(build_model(fast.model, fused_attention=True), fast, device, compiled=gpu)),
             "legacy": (exact, legacy_step(exact, device))}
    cells = []
    for mode, (config, step) in steps.items():
        if step is None:
            continue
        cells.append(Cell(mode, "model_step", step, device_batches(config, batch_size, device)))
        if mode != "legacy":
            cells.append(Cell(mode, "full_loop", step, loader_batches(folder, config, batch_size, device)))
            cells.append(Cell(mode, "front_end", FrontEnd(step.model, config),  # type: ignore[arg-type]
                              device_batches(config, batch_size, device)))
    return cells


def share_of_step(cell: Cell, cells: list[Cell]) -> float | None:
    """For a `front_end` cell: median over rounds of its time over the same mode's `model_step` time."""
    step = next((c for c in cells if c.mode == cell.mode and c.path == "model_step"), None)
    if cell.path != "front_end" or step is None:
        return None
    return statistics.median(whole / part for part, whole in zip(cell.rates, step.rates, strict=True))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    warmup, rounds = (5 if gpu else 2), args.rounds or 20
    steps = args.steps_per_round or (3 if gpu else 1)
    peak = peak_tflops(device)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            batch_size = GPU_BATCH[name] if gpu else CPU_BATCH
            exact = job_config(name, fast=False)
            folder = Path(tmp) / name
            write_npy_channel(folder, "train", "v0", generate(exact.model, batch_size * 32, 1))
            gflop = flops_per_sample(exact, device) / 1e9
            cells = cells_for(name, folder, batch_size, device)
            interleaved(cells, warmup, rounds, steps, device)
            for cell in cells:
                rate, ratio = statistics.median(cell.rates), ratio_to_exact(cell, cells)
                result = {"config": name, "mode": cell.mode, "path": cell.path,
                          "device": torch.cuda.get_device_name(device) if gpu else "cpu", "batch_size": batch_size,
                          "steps": steps, "rounds": rounds, "samples_per_s": round(rate, 1),
                          "ratio_to_exact": round(ratio, 3) if ratio is not None else None,
                          "gflop_per_sample": round(gflop, 3), "achieved_tflops": round(rate * gflop / 1e3, 3),
                          "utilisation": round(rate * gflop / 1e3 / peak, 4) if peak else None}
                share = share_of_step(cell, cells)
                if share is not None:
                    result = {**result, "share_of_step": round(share, 3), "achieved_tflops": None,
                              "utilisation": None}
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = {f"{r['config']}_{r['path']}_{r['mode']}_over_exact": r["ratio_to_exact"] for r in results
              if r["mode"] != "exact" and r["ratio_to_exact"] is not None}
    return {"bench": "model_step_summary", "rounds": results[0]["rounds"] if results else 0, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds after warm-up (default 20)")
    parser.add_argument("--steps-per-round", type=int, default=0,
                        help="steps per cell and round (default 3 GPU, 1 CPU)")
    parser.add_argument("--configs", default="eu,na")
    args = parser.parse_args()
    configure_allocator()
    torch.manual_seed(0)
    print(json.dumps(summary(run(args))), flush=True)


if __name__ == "__main__":
    main()

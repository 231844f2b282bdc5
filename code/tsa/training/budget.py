"""The budget: refuse a job that cannot fit, before anything is built or read.

Memory: the model's parameters with gradients and Adam state, plus a batch's activations, estimated
from the model section and the batch size alone (nothing built), against what this host (or one GPU)
has now; the refusal names the largest value of each size hyperparameter that would fit. Disk: what
each output folder needs at most.
"""

from __future__ import annotations

import os

import torch

from tsa.config import ModelConfig
from tsa.errors import ConfigError
from tsa.training.world import WorldLayout

BYTES_PER_PARAMETER = 16  # float32 weight, gradient and Adam's two moments
MEMORY_HEADROOM = 0.9  # of the memory available now
OUTPUT_MARGIN = 16 * 2**20  # plots, score files, metrics
# The sizes a user can lower, in the order a fix is suggested (batch_size is the train section's, the rest the model's).
SIZE_KEYS = ("batch_size", "n_layers_order", "n_layers_feature", "dim_attn_feedforward", "dim_embedding_table",
             "n_embedding")


def parameter_count(model: ModelConfig) -> int:
    """The model's parameter count estimated from its config alone, nothing built (tested within 5%)."""
    m = model
    d, e, f, k = m.dim_embedding_table, 2 * m.dim_embedding_table, m.dim_attn_feedforward, m.num_experts
    ffn = (lambda width: k * 2 * width * f + width * k) if m.use_moe else (lambda width: 2 * width * f + f + width)
    order_layer = 4 * e * e + 8 * e + ffn(e)
    feature_layer = 4 * d * d + 8 * d + ffn(d)
    aggregation = (m.n_cat_features ** 2 + m.n_num_features ** 2) // 2 + m.n_cat_features + m.n_num_features
    order = m.n_layers_order * order_layer + aggregation + 4 * e + (m.n_cat_features + m.n_num_features) * d
    tokens = m.n_cat_features + m.n_num_features + m.n_engineered_num_features
    feature = m.n_layers_feature * feature_layer + tokens * d
    encoders = 2 * order + 60_000 if m.model_type == "dual" else order  # + the dual gate network (fixed, small)
    table = (m.n_embedding + 2) * (d + (16 if m.model_type == "dual" else 0))
    return table + encoders + feature + 3 * d * 1024 + 1024 * (m.n_classes + 1)


def activation_bytes(model: ModelConfig, batch_size: int) -> int:
    """An estimate of the float32 activations one training batch keeps for the backward."""
    m = model
    b, length, d, e, f = batch_size, m.seq_len, m.dim_embedding_table, 2 * m.dim_embedding_table, m.dim_attn_feedforward
    s, t = length + 1, m.n_cat_features + m.n_num_features + m.n_engineered_num_features + 1
    gather = 3 * length * (m.n_cat_features + m.n_num_features) * d
    order = m.n_layers_order * (3 * m.num_heads * s * s + s * (6 * e + 2 * f))
    feature = m.n_layers_feature * (3 * m.num_heads * t * t + t * (6 * d + 2 * f))
    per_example = (2 if m.model_type == "dual" else 1) * (gather + order) + feature + 3 * 1024
    return 4 * b * per_example


def output_bytes(model: ModelConfig) -> dict[str, int]:
    """Disk space each output folder needs at most, from the float32 parameter count.

    model: the weights twice (safetensors, and the legacy `.pt` state dict the inference handler loads);
    checkpoints: `last.ckpt` (weights and Adam's two moments) twice while it is replaced, plus the best weights.
    """
    weights = 4 * parameter_count(model)
    return {"model": 2 * weights + OUTPUT_MARGIN, "checkpoints": 7 * weights + OUTPUT_MARGIN,
            "output": OUTPUT_MARGIN}


def available_host_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_needed(model: ModelConfig, batch_size: int) -> int:
    """Bytes one training process needs: parameters with gradients and Adam state, and a batch's activations."""
    return parameter_count(model) * BYTES_PER_PARAMETER + activation_bytes(model, batch_size)


def _needed_with(model: ModelConfig, batch_size: int, key: str, value: int) -> int:
    """`memory_needed` with the size `key` set to `value`."""
    if key == "batch_size":
        return memory_needed(model, value)
    return memory_needed(model.model_copy(update={key: value}), batch_size)


def largest_fitting(model: ModelConfig, batch_size: int, key: str, budget: float) -> int | None:
    """The largest value of `key` (at most its current one) whose estimate fits `budget`, None if even the
    smallest does not; `dim_embedding_table` stays a multiple of `num_heads`, `n_embedding` above the
    feature counts, as the config requires."""
    step = model.num_heads if key == "dim_embedding_table" else 1
    low = model.n_num_features + model.n_cat_features + 1 if key == "n_embedding" else step
    high = batch_size if key == "batch_size" else getattr(model, key)
    if high < low or _needed_with(model, batch_size, key, low) > budget:
        return None
    while high - low > step:  # the estimate grows with every one of these sizes
        middle = low + (high - low) // (2 * step) * step
        low, high = (middle, high) if _needed_with(model, batch_size, key, middle) <= budget else (low, middle)
    return high if _needed_with(model, batch_size, key, high) <= budget else low


def check_memory(model: ModelConfig, batch_size: int, world: WorldLayout, available: int | None = None) -> None:
    """Refuse a config whose estimated memory exceeds what this host (or one GPU) has: both numbers, and
    the largest value of each size hyperparameter that would fit, everything else unchanged."""
    params = parameter_count(model)
    needed = memory_needed(model, batch_size)
    on_gpu = world.accelerator == "gpu"
    if on_gpu:
        where, have = "one GPU", torch.cuda.mem_get_info()[0] if available is None else available
    else:
        where = f"this host ({world.devices} process(es))"
        have = (available_host_bytes() if available is None else available) // max(world.devices, 1)
    budget = MEMORY_HEADROOM * have
    if needed <= budget:
        return
    fixes = [f"{key}={value}" for key in SIZE_KEYS
             if (value := largest_fitting(model, batch_size, key, budget)) is not None]
    if not on_gpu and world.devices > 1:
        total = available_host_bytes() if available is None else available * world.devices
        processes = int(MEMORY_HEADROOM * total // needed)
        if processes >= 1:
            fixes.append(f"cpu_processes={processes}")
    remedy = (f"lower one of them: at most {', '.join(fixes)} fits (each with the others unchanged)" if fixes
              else "no single size fits; lower several of them")
    raise ConfigError([
        f"the model does not fit: about {needed / 2**30:.1f} GiB per process ({params:,} parameters with their "
        f"gradients and Adam state, plus the activations of a batch of {batch_size}), but "
        f"{where} has {have / 2**30:.1f} GiB available; {remedy}"
    ])

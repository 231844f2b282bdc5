"""The run plan: how this job runs, decided once at start from the config and the machine.

`plan_run(config, resources)` is the single place that decides
- the world: every GPU of every host (CPU: `cpu_processes` per host), the master (the first host
  in numeric `algo-N` order, identical on every node), this node's rank;
- the numerics: the precision Lightning trains in, and the fast-mode parts — fused attention,
  `torch.compile` of the forward (GPU only), float32 matmul precision "high" (TF32 on GPU).
  `fast_mode=false` (default) is the exact legacy path: fp32 (fp16 AMP with `use_amp`, GPU only as
  in legacy), the legacy kernels, no compile;
and everything downstream (Trainer, system, data module, model builder) reads the plan.

Lightning starts the local ranks itself by re-running the job's command line with `LOCAL_RANK`
set (LightningEnvironment), so `configure_environment` only sets what it reads: `MASTER_ADDR`, a
fixed `MASTER_PORT`, `NODE_RANK` (multi-node only: a stray NODE_RANK hangs single-node DDP), and
`NCCL_SOCKET_IFNAME` / `GLOO_SOCKET_IFNAME` from `network_interface_name`. Values already in the
environment win (the local runner emulates several hosts on 127.0.0.1 that way). Reference:
../shared/docs/sagemaker_contract.md §5.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tsa.config import JobConfig, Precision, RuntimeConfig
from tsa.contract import ResourceConfig
from tsa.errors import ConfigError

log = logging.getLogger(__name__)

MASTER_PORT = 7777  # what the AWS runners use


@dataclass(frozen=True)
class WorldLayout:
    accelerator: str  # "gpu" or "cpu"
    devices: int  # processes per host
    num_nodes: int
    node_rank: int
    master_addr: str
    network_interface: str | None

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def is_distributed() -> bool:
    """A process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_launched_worker() -> bool:
    """True in the ranks Lightning started (local rank > 0): they skip once-per-host work."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def world_layout(resources: ResourceConfig, runtime: RuntimeConfig, gpus: int) -> WorldLayout:
    """Every one of the `gpus` GPUs of every host (unless `accelerator=cpu`), else `cpu_processes`."""
    use_gpu = runtime.accelerator != "cpu" and gpus > 0
    if runtime.accelerator == "gpu" and not use_gpu:
        log.warning("accelerator=gpu but no CUDA device is visible: training on CPU")
    return WorldLayout(
        accelerator="gpu" if use_gpu else "cpu",
        devices=gpus if use_gpu else runtime.cpu_processes,
        num_nodes=resources.num_nodes,
        node_rank=resources.node_rank,
        master_addr=resources.master_host,
        network_interface=resources.network_interface_name,
    )


@dataclass(frozen=True)
class RunPlan:
    """Processes and numerics of this run (see the module docstring)."""

    world: WorldLayout
    precision: Precision  # what Lightning trains in
    fused_attention: bool  # scaled_dot_product_attention kernels and broadcast table lookups
    compile_model: bool  # torch.compile of the model's forward
    fast_matmul: bool  # float32 matmul precision "high" (TF32 on GPU)

    @property
    def on_gpu(self) -> bool:
        return self.world.accelerator == "gpu"

    @property
    def pin_memory(self) -> bool:
        return self.on_gpu

    def describe(self, current_host: str) -> str:
        w = self.world
        return (f"world: {w.num_nodes} node(s) x {w.devices} {w.accelerator} process(es); this host {current_host} is "
                f"node {w.node_rank}; master {w.master_addr}; numerics: precision {self.precision}, fused attention "
                f"{_on(self.fused_attention)}, compile {_on(self.compile_model)}, "
                f"float32 matmul {'high' if self.fast_matmul else 'highest'}")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def precision_for(runtime: RuntimeConfig, on_gpu: bool) -> Precision:
    """The precision to train in: `precision` if set, else fast mode's bf16 or `use_amp`'s fp16.

    On CPU, fp16 AMP falls back to 32 (the legacy AMP was GPU only) and fast mode stays fp32
    (bf16 autocast is emulated, i.e. slower, on most CPUs) unless `precision` asks for it.
    """
    if runtime.precision is not None:
        precision = runtime.precision
    elif runtime.fast_mode:
        precision = "bf16-mixed" if on_gpu else "32"
    else:
        precision = "16-mixed" if runtime.use_amp else "32"
    if precision == "16-mixed" and not on_gpu:
        log.warning("precision 16-mixed (use_amp=1) needs a GPU, as the legacy AMP did: training in 32 on CPU")
        return "32"
    return precision


def plan_run(config: JobConfig, resources: ResourceConfig, gpus: int | None = None) -> RunPlan:
    """The one decision of how this job runs (`gpus`: the visible CUDA devices, detected when None)."""
    world = world_layout(resources, config.runtime, visible_gpus() if gpus is None else gpus)
    on_gpu = world.accelerator == "gpu"
    fast = config.runtime.fast_mode
    return RunPlan(world=world, precision=precision_for(config.runtime, on_gpu), fused_attention=fast,
                   compile_model=fast and on_gpu, fast_matmul=fast)


def configure_environment(layout: WorldLayout) -> None:
    """Export the rendezvous variables for Lightning's launcher (values already set win)."""
    if layout.world_size <= 1:
        return
    os.environ.setdefault("MASTER_ADDR", layout.master_addr if layout.num_nodes > 1 else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(MASTER_PORT))
    if layout.num_nodes > 1:
        os.environ.setdefault("NODE_RANK", str(layout.node_rank))
    if layout.network_interface:
        os.environ.setdefault("NCCL_SOCKET_IFNAME", layout.network_interface)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", layout.network_interface)


# --- memory: refuse a config that cannot fit, before anything is built --------------------------
BYTES_PER_PARAMETER = 16  # float32 weight, gradient and Adam's two moments
MEMORY_HEADROOM = 0.9  # of the memory available now


def parameter_count(config: JobConfig) -> int:
    """The model's parameter count estimated from the config alone, nothing built (tested within 5%)."""
    m = config.model
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


def activation_bytes(config: JobConfig) -> int:
    """An estimate of the float32 activations one training batch keeps for the backward."""
    m = config.model
    b, length, d, e, f = config.train.batch_size, m.seq_len, m.dim_embedding_table, 2 * m.dim_embedding_table, \
        m.dim_attn_feedforward
    s, t = length + 1, m.n_cat_features + m.n_num_features + m.n_engineered_num_features + 1
    gather = 3 * length * (m.n_cat_features + m.n_num_features) * d
    order = m.n_layers_order * (3 * m.num_heads * s * s + s * (6 * e + 2 * f))
    feature = m.n_layers_feature * (3 * m.num_heads * t * t + t * (6 * d + 2 * f))
    per_example = (2 if m.model_type == "dual" else 1) * (gather + order) + feature + 3 * 1024
    return 4 * b * per_example


OUTPUT_MARGIN = 16 * 2**20  # plots, score files, metrics


def output_bytes(config: JobConfig) -> dict[str, int]:
    """Disk space each output folder needs at most, from the float32 parameter count.

    model: the weights twice (safetensors, and the legacy `.pt` state dict the inference handler loads); checkpoints:
    `last.ckpt` (weights and Adam's two moments) twice while it is replaced, plus the best weights.
    """
    weights = 4 * parameter_count(config)
    return {"model": 2 * weights + OUTPUT_MARGIN, "checkpoints": 7 * weights + OUTPUT_MARGIN,
            "output": OUTPUT_MARGIN}


def available_host_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_needed(config: JobConfig) -> int:
    """Bytes one training process needs: parameters with gradients and Adam state, and a batch's activations."""
    return parameter_count(config) * BYTES_PER_PARAMETER + activation_bytes(config)


# The sizes a user can lower, in the order a fix is suggested: (section, key, granularity).
SIZE_KEYS = (("train", "batch_size"), ("model", "n_layers_order"), ("model", "n_layers_feature"),
             ("model", "dim_attn_feedforward"), ("model", "dim_embedding_table"), ("model", "n_embedding"))


def _with(config: JobConfig, section: str, key: str, value: int) -> JobConfig:
    part = getattr(config, section)
    return config.model_copy(update={section: part.model_copy(update={key: value})})


def largest_fitting(config: JobConfig, section: str, key: str, budget: float) -> int | None:
    """The largest value of `key` (at most its current one) whose estimate fits `budget`, None if even the
    smallest does not; `dim_embedding_table` stays a multiple of `num_heads`, `n_embedding` above the
    feature counts, as the config requires."""
    step = config.model.num_heads if key == "dim_embedding_table" else 1
    low = config.model.n_num_features + config.model.n_cat_features + 1 if key == "n_embedding" else step
    high = getattr(getattr(config, section), key)
    if high < low or memory_needed(_with(config, section, key, low)) > budget:
        return None
    while high - low > step:  # the estimate grows with every one of these sizes
        middle = low + (high - low) // (2 * step) * step
        low, high = (middle, high) if memory_needed(_with(config, section, key, middle)) <= budget else (low, middle)
    return high if memory_needed(_with(config, section, key, high)) <= budget else low


def check_memory(config: JobConfig, plan: RunPlan, available: int | None = None) -> None:
    """Refuse a config whose estimated memory exceeds what this host (or one GPU) has: both numbers, and
    the largest value of each size hyperparameter that would fit, everything else unchanged."""
    params = parameter_count(config)
    needed = memory_needed(config)
    if plan.on_gpu:
        where, have = "one GPU", torch.cuda.mem_get_info()[0] if available is None else available
    else:
        where = f"this host ({plan.world.devices} process(es))"
        have = (available_host_bytes() if available is None else available) // max(plan.world.devices, 1)
    budget = MEMORY_HEADROOM * have
    if needed <= budget:
        return
    fixes = [f"{key}={value}" for section, key in SIZE_KEYS
             if (value := largest_fitting(config, section, key, budget)) is not None]
    if not plan.on_gpu and plan.world.devices > 1:
        total = available_host_bytes() if available is None else available * plan.world.devices
        processes = int(MEMORY_HEADROOM * total // needed)
        if processes >= 1:
            fixes.append(f"cpu_processes={processes}")
    remedy = (f"lower one of them: at most {', '.join(fixes)} fits (each with the others unchanged)" if fixes
              else "no single size fits; lower several of them")
    raise ConfigError([
        f"the model does not fit: about {needed / 2**30:.1f} GiB per process ({params:,} parameters with their "
        f"gradients and Adam state, plus the activations of a batch of {config.train.batch_size}), but "
        f"{where} has {have / 2**30:.1f} GiB available; {remedy}"
    ])

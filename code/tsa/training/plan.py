"""The run plan: how this job runs, decided once at start from the runtime section and the machine.

`plan_run(runtime, resources)` is the single place that decides
- the world (`world.py`): every GPU of every host (CPU: `cpu_processes` per host), the master,
  this node's rank;
- the numerics: the precision Lightning trains in, and the fast-mode parts — fused attention,
  `torch.compile` of the forward (GPU only), float32 matmul precision "high" (TF32 on GPU).
  `fast_mode=false` (default) is the exact legacy path: fp32 (fp16 AMP with `use_amp`, GPU only as
  in legacy), the legacy kernels, no compile;
and everything downstream (Trainer, system, data module, model builder) reads the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tsa.config import Precision, RuntimeConfig
from tsa.contract import ResourceConfig
from tsa.training.world import WorldLayout, visible_gpus, world_layout

log = logging.getLogger(__name__)


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


def plan_run(runtime: RuntimeConfig, resources: ResourceConfig, gpus: int | None = None) -> RunPlan:
    """The one decision of how this job runs (`gpus`: the visible CUDA devices, detected when None)."""
    world = world_layout(resources, runtime, visible_gpus() if gpus is None else gpus)
    on_gpu = world.accelerator == "gpu"
    fast = runtime.fast_mode
    return RunPlan(world=world, precision=precision_for(runtime, on_gpu), fused_attention=fast,
                   compile_model=fast and on_gpu, fast_matmul=fast)

"""The world: every GPU of every host (CPU: `cpu_processes` per host), the master, this node's rank,
and the rendezvous variables Lightning reads.

The master is the first host in numeric `algo-N` order, identical on every node. Lightning starts the
local ranks itself by re-running the job's command line with `LOCAL_RANK` set (LightningEnvironment),
so `configure_environment` only sets what it reads: `MASTER_ADDR`, a fixed `MASTER_PORT`, `NODE_RANK`
(multi-node only: a stray NODE_RANK hangs single-node DDP), and `NCCL_SOCKET_IFNAME` /
`GLOO_SOCKET_IFNAME` from `network_interface_name`. Values already in the environment win (the local
runner emulates several hosts on 127.0.0.1 that way). Reference: ../shared/docs/sagemaker_contract.md §5.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tsa.config import RuntimeConfig
from tsa.contract import ResourceConfig

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

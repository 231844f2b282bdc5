"""Which rows each rank and DataLoader worker reads in an epoch, as pure functions.

Training order: for a memory-mapped (`.npy`) channel it is the legacy `DistributedSampler`
(shuffle, seed 0 + epoch, padded by repeating the first rows so every rank gets ceil(N/world)
rows, rank r taking every world-th row), so a legacy run's batches are reproduced. For a
Parquet channel the permutation keeps row groups together (row-group order shuffled, rows
shuffled within each group) and ranks take contiguous blocks, so each row group is decoded by
one reader. Evaluation in the legacy order uses the same plan; the row-order plan (no shuffle,
no padding) reads every row exactly once across ranks and workers.

Ranks must run the same number of training steps (DDP), so training pads each rank to the same
row count; at most world-1 rows repeat per epoch, exactly like the legacy sampler.

A channel SageMaker split across hosts (`ShardedByS3Key`) holds different rows on every host
(`HostShards`): host h's rows are numbered after those of hosts 0..h-1, so an evaluation
gathered from every host keys each example once, in the order of the hosts' shards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

LEGACY_SAMPLER_SEED = 0  # DistributedSampler's default; the legacy --seed never reached it


@dataclass(frozen=True)
class ShardSpec:
    """A reader's place: rank among `world` readers of the channel, and the plan flags."""

    rank: int = 0
    world: int = 1
    shuffle: bool = False
    pad: bool = False
    rows_per_rank: int | None = None  # pad target when ranks hold different channels (ShardedByS3Key)


@dataclass(frozen=True)
class HostShards:
    """Channels split across hosts: every host's row count, in node order, and this host's node rank."""

    node_rank: int = 0
    rows: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __contains__(self, channel: object) -> bool:
        return channel in self.rows

    def offset(self, channel: str, max_rows: int | None = None) -> int:
        """The job-wide number of this host's first row of `channel` (each host reads at most `max_rows`)."""
        return sum(min(n, max_rows or n) for n in self.rows[channel][:self.node_rank])


def epoch_order(num_rows: int, epoch: int, shuffle: bool, group_starts: np.ndarray | None) -> np.ndarray:
    """The global row order of an epoch (before splitting across ranks)."""
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    generator = torch.Generator()
    generator.manual_seed(LEGACY_SAMPLER_SEED + epoch)
    if group_starts is None:
        return torch.randperm(num_rows, generator=generator).numpy().astype(np.int64)
    blocks = [np.arange(group_starts[g], group_starts[g + 1]) for g in range(len(group_starts) - 1)]
    order = torch.randperm(len(blocks), generator=generator).tolist()
    parts = [blocks[g][torch.randperm(len(blocks[g]), generator=generator).numpy()] for g in order]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _pad(order: np.ndarray, total: int) -> np.ndarray:
    """Repeat the order's first rows up to `total` rows (the legacy sampler's padding)."""
    if total <= len(order):
        return order
    reps = math.ceil(total / max(len(order), 1))
    return np.concatenate([order] + [order] * reps)[:total]


def rank_rows(order: np.ndarray, spec: ShardSpec, interleave: bool) -> np.ndarray:
    """The rows of `spec.rank`, in reading order."""
    n, world, rank = len(order), spec.world, spec.rank
    if spec.pad:
        per_rank = math.ceil(n / world)
        padded = _pad(order, per_rank * world)
        rows = padded[rank::world] if interleave else padded[rank * per_rank:(rank + 1) * per_rank]
        if spec.rows_per_rank is not None:
            rows = _pad(rows, spec.rows_per_rank)
        return rows
    if interleave:
        return order[rank::world]
    bounds = [(n * r) // world for r in range(world + 1)]
    return order[bounds[rank]:bounds[rank + 1]]


def split_batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `batch_size` rows (the last one may be smaller)."""
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def worker_batch_ids(num_batches: int, worker: int, num_workers: int, contiguous: bool) -> range:
    """Batch numbers a DataLoader worker produces.

    Round robin (`contiguous=False`) keeps the global batch order, because the DataLoader
    takes one item from each worker in turn; contiguous blocks keep a worker on its own row
    groups (Parquet).
    """
    if not contiguous:
        return range(worker, num_batches, num_workers)
    bounds = [(num_batches * w) // num_workers for w in range(num_workers + 1)]
    return range(bounds[worker], bounds[worker + 1])


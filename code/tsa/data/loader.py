"""Batches without per-sample Python: each DataLoader item is a whole batch, gathered at once.

`BatchStream` is an `IterableDataset` over one channel: for its rank and DataLoader worker it
takes the epoch's batches (`sharding`), gathers each batch's rows with one vectorised read
(memory map fancy-indexing, or the Parquet row groups it touches) and returns the legacy batch
dict plus `row` (job-wide row numbers, used to put predictions back in order without duplicates).
The epoch is set by the training loop before each epoch (`set_epoch`); `start_batch` skips the
batches a resumed run already trained on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tsa.data.batches import Batch
from tsa.data.channels import ChannelSource
from tsa.data.sharding import ShardSpec, epoch_order, rank_rows, split_batches, worker_batch_ids

log = logging.getLogger(__name__)

# glibc mallopt parameters: keep large blocks in the heap instead of mmap/munmap per allocation.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def configure_allocator() -> bool:
    """Let glibc reuse large batch buffers instead of returning them to the OS after each batch.

    A batch at the EU shape is ~60 MB; by default glibc serves such blocks with mmap and frees
    them with munmap, so every batch pays page faults on fresh memory (measured: about half the
    loader's time). Raising the mmap and trim thresholds keeps the freed blocks for the next
    batch. No-op where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
                  and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        ok = False
    log.debug("glibc allocator thresholds raised: %s", ok)
    return ok


class BatchStream(IterableDataset):
    """The batches of one channel for one rank, split across DataLoader workers."""

    def __init__(
        self, source: ChannelSource, model_type: str, batch_size: int, shard: ShardSpec, max_rows: int | None = None,
        row_offset: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.model_type, self.batch_size, self.shard = source, model_type, batch_size, shard
        self.row_offset = row_offset  # added to `row`: the job-wide number of this host's first row (HostShards)
        self.num_rows = min(source.num_rows, max_rows) if max_rows else source.num_rows
        self.names: Sequence[str] = source.names
        self.epoch = 0
        self.start_batch = 0
        # Row-group boundaries for locality-keeping shuffles (None for memory maps).
        starts = getattr(source, "group_starts", None) if source.locality_rows > 1 else None
        self.group_starts = None if starts is None else np.unique(np.minimum(starts, self.num_rows))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (row numbers), in training order."""
        order = epoch_order(self.num_rows, self.epoch, self.shard.shuffle, self.group_starts)
        rows = rank_rows(order, self.shard, interleave=self.group_starts is None)
        return split_batches(rows, self.batch_size)

    def __len__(self) -> int:
        """Batches of a whole epoch, also while resuming one: the training loop counts the trained ones.

        Only the rank's row count matters, not the order: no permutation is drawn. Exact with any
        number of DataLoader workers (`__iter__` splits the batches among them), so Lightning's
        warning about a length on an `IterableDataset` does not apply; it is filtered in `tsa/logs.py`.
        """
        rows = len(rank_rows(np.arange(self.num_rows, dtype=np.int64), self.shard,
                             interleave=self.group_starts is None))
        return -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = self.batches()[self.start_batch:]
        for index in worker_batch_ids(len(batches), worker, workers, contiguous=self.group_starts is not None):
            rows = batches[index]
            batch = self.source.batch(rows, self.model_type)
            batch["row"] = torch.from_numpy(np.asarray(rows, dtype=np.int64) + self.row_offset)
            yield batch


def make_loader(stream: BatchStream, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader that passes the stream's ready-made batches through (no collation)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,  # workers restart each epoch and so see the new epoch number
        prefetch_factor=4 if num_workers else None,
    )

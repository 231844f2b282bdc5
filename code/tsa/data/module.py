"""The Lightning DataModule: channels -> per-rank batch streams -> DataLoaders, and the position.

Position: the training epoch and how many of its batches are trained. The training system tells
the module when an epoch starts, a batch is trained and an epoch is complete; the module sets its
streams accordingly (sampler epoch, batches to skip) and keeps the position in checkpoints
(`state_dict` / `load_state_dict`, called by Lightning), so a resumed run continues at the batch
after the last one trained.

Sharding: a channel SageMaker copies to every host (`FullyReplicated`) is split across all
ranks of the job; a channel it already split per host (`ShardedByS3Key`) is split across the
ranks of this host only, and training pads every rank to the largest per-rank row count of the
job, so all ranks run the same number of steps. A host-sharded evaluation channel is read in row
order, each row once, numbered job-wide (`HostShards`): the gathered pass covers every host's
rows, as the row-order evaluation (`fix_evaluation_order`) of one channel holding all of them would.
The legacy order (a permutation of one channel's rows) has no meaning across hosts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data.channels import ChannelSource, open_channel
from tsa.data.loader import BatchStream, make_loader
from tsa.data.sharding import HostShards, ShardSpec

log = logging.getLogger(__name__)

SMALL_BATCH_ROWS = 40_000  # legacy use_small_batch: the first 40,000 rows of each split


@dataclass
class Position:
    """The training epoch and the number of its batches already trained."""

    epoch: int = 0
    batches_done: int = 0


class TsaDataModule(L.LightningDataModule):
    """Batches of the train / validation / calibration / test channels for this rank."""

    def __init__(self, config: JobConfig, channels: dict[str, Channel], pin_memory: bool = False,
                 host_shards: HostShards | None = None) -> None:
        super().__init__()
        self.config = config
        self.channels = channels
        self.pin_memory = pin_memory
        self.host_shards = host_shards or HostShards()  # channels whose rows differ between hosts
        self.sources: dict[str, ChannelSource] = {}
        self.streams: dict[str, BatchStream] = {}
        self.position = Position()
        self._restored = False  # a checkpoint's position waits for its epoch to start

    # -- position ----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> bool:
        """Training epoch `epoch` begins; False when it is a restored epoch's remainder."""
        if self._restored and epoch == self.position.epoch:
            self._restored = False
            if self.position.batches_done:
                log.info("resuming epoch %d after batch %d", epoch, self.position.batches_done)
            fresh = self.position.batches_done == 0
        else:
            self._restored = False
            self.position = Position(epoch, 0)
            fresh = True
        self._place_streams()
        return fresh

    def batch_trained(self) -> None:
        self.position.batches_done += 1

    def epoch_complete(self) -> None:
        """The current epoch is trained and validated: a checkpoint now resumes at the next one."""
        self.position = Position(self.position.epoch + 1, 0)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.position)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position = Position(**state_dict)
        self._restored = True
        self._place_streams()

    def _place_streams(self) -> None:
        for name, stream in self.streams.items():
            self._place_stream(name, stream)

    def _place_stream(self, name: str, stream: BatchStream) -> None:
        """A stream reads the sampler order of the current epoch; training skips the trained batches."""
        stream.set_epoch(self.position.epoch)
        stream.start_batch = self.position.batches_done if name == "train" else 0

    @property
    def max_rows(self) -> int | None:
        return SMALL_BATCH_ROWS if self.config.data.use_small_batch else None

    def setup(self, stage: str | None = None) -> None:
        for name, channel in self.channels.items():
            if name not in self.sources:
                self.sources[name] = open_channel(channel, self.config.data, self.config.model)

    def _place(self, name: str) -> tuple[int, int]:
        """(rank, world) among the readers of channel `name`."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        if self.channels[name].sharded_by_host:
            return trainer.local_rank, trainer.num_devices
        return trainer.global_rank, trainer.world_size

    def _training_rows_per_rank(self, source: ChannelSource, world: int) -> int | None:
        """For host-sharded channels: the job-wide max of per-rank rows (equal step counts)."""
        if not self.channels["train"].sharded_by_host or self.trainer is None:
            return None
        rows = min(source.num_rows, self.max_rows or source.num_rows)
        local = torch.tensor(math.ceil(rows / world), dtype=torch.long)
        return int(self.trainer.strategy.reduce(local, reduce_op="max"))

    def stream(self, name: str, training: bool) -> BatchStream:
        """This rank's batches of channel `name`.

        Training, and evaluation in the legacy order, use the legacy sampler (shuffled with seed
        0 + epoch, padded to equal shares); `fix_evaluation_order` evaluates in row order, each
        row once.
        """
        source = self.sources[name]
        rank, world = self._place(name)
        rows_per_rank = self._training_rows_per_rank(source, world) if training else None
        sampled = training or self.legacy_evaluation(name)
        shard = ShardSpec(rank=rank, world=world, shuffle=sampled, pad=sampled, rows_per_rank=rows_per_rank)
        offset = self.host_shards.offset(name, self.max_rows) if name in self.host_shards and not training else 0
        stream = BatchStream(source, self.config.model.model_type, self.config.train.batch_size, shard, self.max_rows,
                             row_offset=offset)
        self._place_stream(name, stream)
        self.streams[name] = stream
        return stream

    def loader(self, stream: BatchStream) -> DataLoader:
        return make_loader(stream, self.config.data.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.stream("train", training=True))

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.stream("validation", training=False))

    def evaluation_loader(self, name: str, epoch: int) -> DataLoader:
        """The batches of evaluation channel `name` for this rank, in the order of sampler epoch `epoch`."""
        self.setup()
        stream = self.stream(name, training=False)
        stream.set_epoch(epoch)
        return self.loader(stream)

    def legacy_evaluation(self, name: str) -> bool:
        """Whether channel `name` is evaluated in the legacy sampler order (else in row order, each row once)."""
        return not self.config.train.fix_evaluation_order and name not in self.host_shards

    def row_counts(self) -> dict[str, int | list[int]]:
        """Examples per channel, job-wide (what a checkpoint records of the data it was trained on): a channel
        split across hosts counts every host's rows, in node order, so every host records the same."""
        self.setup()
        return {name: list(self.host_shards.rows[name]) if name in self.host_shards else int(source.num_rows)
                for name, source in sorted(self.sources.items())}

    def ids(self, name: str, rows: np.ndarray) -> np.ndarray | None:
        """The example ids of job-wide `rows` of channel `name` (None when the format has none).

        For a channel split across hosts each host looks up its own rows and the ranks exchange them
        (a collective: every rank calls it).
        """
        source = self.sources[name]
        if name not in self.host_shards:
            return source.ids(rows)
        start = self.host_shards.offset(name, self.max_rows)
        mine = np.flatnonzero((rows >= start) & (rows < start + min(source.num_rows, self.max_rows or source.num_rows)))
        local = source.ids(rows[mine] - start)
        parts: list[Any] = [(mine, local)]
        if dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (mine, local))
        if any(values is None for _, values in parts):
            return None
        ids = np.empty(len(rows), dtype=object)
        for positions, values in parts:
            ids[positions] = values
        return ids

"""The Lightning DataModule: channels -> per-rank batch streams -> DataLoaders.

Sharding: a channel SageMaker copies to every host (`FullyReplicated`) is split across all
ranks of the job; a channel it already split per host (`ShardedByS3Key`) is split across the
ranks of this host only, and training pads every rank to the largest per-rank row count of the
job, so all ranks run the same number of steps.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import DataLoader

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data.channels import ChannelSource, open_channel
from tsa.data.loader import BatchStream, make_loader
from tsa.data.sharding import ShardSpec

SMALL_BATCH_ROWS = 40_000  # legacy use_small_batch: the first 40,000 rows of each split


class TsaDataModule(L.LightningDataModule):
    """Batches of the train / validation / calibration / test channels for this rank."""

    def __init__(self, config: JobConfig, channels: dict[str, Channel], pin_memory: bool = False) -> None:
        super().__init__()
        self.config = config
        self.channels = channels
        self.pin_memory = pin_memory
        self.sources: dict[str, ChannelSource] = {}
        self.streams: dict[str, BatchStream] = {}

    @property
    def max_rows(self) -> int | None:
        return SMALL_BATCH_ROWS if self.config.data.use_small_batch else None

    def setup(self, stage: str | None = None) -> None:
        for name, channel in self.channels.items():
            if name not in self.sources:
                self.sources[name] = open_channel(channel, self.config)

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
        sampled = training or not self.config.train.fix_evaluation_order
        shard = ShardSpec(rank=rank, world=world, shuffle=sampled, pad=sampled, rows_per_rank=rows_per_rank)
        stream = BatchStream(source, self.config.model.model_type, self.config.train.batch_size, shard, self.max_rows)
        self.streams[name] = stream
        return stream

    def set_epoch(self, epoch: int) -> None:
        """The sampler epoch of every stream (validation after training epoch e reads order e)."""
        for stream in self.streams.values():
            stream.set_epoch(epoch)

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

"""Open a SageMaker channel as a channel source (legacy `.npy` or Parquet).

A channel source offers: `names`, `num_rows`, `rows_of/shape_of/dtype_of/file_of(name)`,
`take(indices, names)` (vectorised gather), `iter_chunks(names, rows)` (streaming) and
`locality_rows` (rows cheap to read together: 1 for memory maps, a row group for Parquet) and
`ids(indices)` (the example ids, or None when the format has none), `describe_dtype(name)` (the
stored value type, as an error names it) and `host_shard` (True when the folder holds only this
host's share of the channel, `ShardedByS3Key`).
"""

from __future__ import annotations

from pathlib import Path

from tsa.config import DataConfig, ModelConfig
from tsa.contract import SHARDED_BY_S3_KEY, Channel
from tsa.data.npy import NpyChannel
from tsa.data.parquet import ParquetChannel
from tsa.data.schema import array_specs
from tsa.errors import ChannelError

ChannelSource = NpyChannel | ParquetChannel


EVALUATION_CHANNELS = ("validation", "calibration", "test")  # scored after training, in this order


def detect_format(folder: Path, channel: str, sharded: bool = False) -> str:
    """`npy` or `parquet` by the files present; a channel with neither is an error."""
    has_npy = any(folder.glob("*.npy"))
    has_parquet = any(folder.glob("*.parquet"))
    if has_npy and has_parquet:
        raise ChannelError(
            f"channel '{channel}' ({folder}) holds both .npy and .parquet files: keep one format, "
            "or set data_format to choose"
        )
    if not (has_npy or has_parquet):
        why = (f" ({SHARDED_BY_S3_KEY} gives a host no files when the channel has fewer S3 objects than the job "
               "has hosts: write at least one Parquet file per host)" if sharded else "")
        raise ChannelError(
            f"channel '{channel}' ({folder}) is empty: expected legacy .npy arrays or .parquet files{why}"
        )
    return "npy" if has_npy else "parquet"


def open_channel(channel: Channel, data: DataConfig, model: ModelConfig) -> ChannelSource:
    """The channel's data, opened lazily (nothing is loaded into memory here)."""
    fmt = data.data_format
    if fmt == "auto":
        fmt = detect_format(channel.path, channel.name, channel.sharded_by_host)
    specs = array_specs(model)
    if fmt == "npy" and channel.sharded_by_host:
        raise ChannelError(
            f"channel '{channel.name}' has S3DistributionType '{SHARDED_BY_S3_KEY}', but its legacy .npy layout is "
            "one S3 object per array, so sharding by key hands each host some of the arrays, not some of the rows: use "
            "'FullyReplicated' for it, or convert it to Parquet (`tsa data convert SRC DST --to parquet`, several "
            "files), the layout that shards by rows"
        )
    if fmt == "npy":
        return NpyChannel(channel.name, channel.path, data.data_version, specs)
    source = ParquetChannel(channel.name, channel.path, specs)
    source.host_shard = channel.sharded_by_host
    return source

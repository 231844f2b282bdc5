"""Sharding, batch streams, conversion and synthetic data (`tsa.data`).

Run: .venv/bin/pytest tests/unit/test_data_loading.py
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from tests.inputs import DATA_HP
from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import open_channel, validate_channel
from tsa.data.convert import npy_to_parquet, parquet_to_npy, read_npy_arrays, write_npy_channel
from tsa.data.loader import BatchStream, make_loader
from tsa.data.sharding import ShardSpec, epoch_order, rank_rows
from tsa.data.synth import generate

CONFIG = JobConfig.from_hyperparameters(DATA_HP)


def channel(tmp_path: Path, rows: int, fmt: str, name: str = "train") -> object:
    folder = tmp_path / name
    arrays = generate(CONFIG.model, rows, seed=0)
    write_npy_channel(folder, name, "v0", arrays)
    if fmt == "parquet":
        npy_to_parquet(folder, tmp_path / f"{name}_pq", row_group_rows=7)
        folder = tmp_path / f"{name}_pq"
    return open_channel(Channel(name, folder), CONFIG.data, CONFIG.model)


def rows_seen(source: object, world: int, workers: int, training: bool, epoch: int = 0) -> list[list[int]]:
    """Rows each rank reads in one epoch, through real DataLoaders with worker processes."""
    seen = []
    for rank in range(world):
        stream = BatchStream(source, "single", 8, ShardSpec(rank, world, shuffle=training, pad=training))
        stream.set_epoch(epoch)
        loader = make_loader(stream, num_workers=workers, pin_memory=False)
        seen.append([int(r) for batch in loader for r in batch["row"]])
    return seen


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
@pytest.mark.parametrize("training", [False, True])
def test_two_ranks_two_workers_see_every_example_once(tmp_path: Path, fmt: str, training: bool) -> None:
    source = channel(tmp_path, 100, fmt)
    seen = rows_seen(source, world=2, workers=2, training=training)
    assert len(seen[0]) == len(seen[1]) == 50
    assert sorted(seen[0] + seen[1]) == list(range(100))


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_uneven_split_evaluation_exactly_once_training_equal_steps(tmp_path: Path, fmt: str) -> None:
    source = channel(tmp_path, 103, fmt)
    evaluation = rows_seen(source, world=2, workers=2, training=False)
    assert sorted(evaluation[0] + evaluation[1]) == list(range(103))
    training = rows_seen(source, world=2, workers=2, training=True)
    assert len(training[0]) == len(training[1]) == 52  # equal step counts for DDP
    counts = Counter(training[0] + training[1])
    assert set(counts) == set(range(103)) and sum(c - 1 for c in counts.values()) == 1  # world-1 repeats


@pytest.mark.parametrize("epoch", [0, 3])
@pytest.mark.parametrize(("n", "world"), [(10, 1), (103, 2), (101, 4)])
def test_npy_training_order_is_the_legacy_distributed_sampler(n: int, world: int, epoch: int) -> None:
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        ours = rank_rows(epoch_order(n, epoch, True, None), ShardSpec(rank, world, True, True), interleave=True)
        assert ours.tolist() == list(sampler)


def test_parquet_shuffle_keeps_row_groups_together() -> None:
    starts = np.array([0, 7, 14, 20])
    order = epoch_order(20, epoch=1, shuffle=True, group_starts=starts)
    assert sorted(order.tolist()) == list(range(20))
    groups = np.searchsorted(starts, order, side="right") - 1
    assert (np.diff(groups) != 0).sum() == 2  # three groups, each read as one run


def test_host_sharded_training_pads_to_the_job_wide_rows_per_rank() -> None:
    rows = rank_rows(np.arange(10), ShardSpec(0, 1, shuffle=False, pad=True, rows_per_rank=13), interleave=True)
    assert len(rows) == 13 and sorted(set(rows.tolist())) == list(range(10))


def test_batches_keep_the_legacy_order_with_workers(tmp_path: Path) -> None:
    source = channel(tmp_path, 64, "npy")
    stream = BatchStream(source, "single", 8, ShardSpec(shuffle=True, pad=True))
    stream.set_epoch(2)
    expected = [b.tolist() for b in stream.batches()]
    got = [batch["row"].tolist() for batch in make_loader(stream, num_workers=2, pin_memory=False)]
    assert got == expected


def test_resume_skips_the_batches_already_trained(tmp_path: Path) -> None:
    source = channel(tmp_path, 64, "npy")
    stream = BatchStream(source, "single", 8, ShardSpec(shuffle=True, pad=True))
    full = [b["row"].tolist() for b in make_loader(stream, 0, False)]
    stream.start_batch = 3
    assert [b["row"].tolist() for b in make_loader(stream, 0, False)] == full[3:]


def test_npy_parquet_npy_round_trip_is_lossless(tmp_path: Path) -> None:
    arrays = generate(CONFIG.model, 23, seed=1)
    arrays["Y"] = arrays["Y"].reshape(-1, 1)  # legacy files may hold (N, 1) labels
    arrays["X_seq_cat"] = arrays["X_seq_cat"].astype(np.int64)
    write_npy_channel(tmp_path / "a", "train", "v7", arrays)
    npy_to_parquet(tmp_path / "a", tmp_path / "b", row_group_rows=5)
    parquet_to_npy(tmp_path / "b", tmp_path / "c", split="vali", version="v7")
    back = read_npy_arrays(tmp_path / "c")
    assert set(back) == set(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array), name
    assert len(list((tmp_path / "c").glob("vali_*_v7.npy"))) == 4


@pytest.mark.parametrize("model_type", ["single", "dual"])
def test_synthetic_data_is_valid_and_plants_a_temporal_signal(tmp_path: Path, model_type: str) -> None:
    config = JobConfig.from_hyperparameters({**DATA_HP, "model_type": model_type, "seq_len": "12"})
    arrays = generate(config.model, 4000, seed=0)
    write_npy_channel(tmp_path / "train", "train", "v0", arrays)
    source = open_channel(Channel("train", tmp_path / "train"), config.data, config.model)
    assert validate_channel(source, config.model) == 4000
    y = arrays["Y"]
    assert 0.15 < y.mean() < 0.3
    seq = arrays["X_seq_num" if model_type == "single" else "cid_X_seq_num"]
    recent = ((seq[..., -2] > 0) & (seq[..., -2] < 3600) & (seq[..., -1] == 1)).sum(axis=1)  # orders in the last hour
    pos, neg = recent[y == 1], recent[y == 0]  # Mann-Whitney AUC of the hand-made burst statistic
    auc = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert auc > 0.7


@pytest.mark.parametrize("model_type", ["single", "dual"])
@pytest.mark.parametrize("dtypes", ["legacy", "compact", "big_endian"])
def test_the_memory_map_gather_is_to_batch_bit_for_bit(tmp_path: Path, model_type: str, dtypes: str) -> None:
    """`NpyChannel.batch` (chunked gather and cast, in threads) against `to_batch(take(...))`, the legacy
    collation the pipeline fixtures pin: same keys, dtypes and bits, across chunk boundaries and repeats."""
    import torch

    from tsa.data.batches import GATHER_CHUNK_ROWS, to_batch

    config = JobConfig.from_hyperparameters({**DATA_HP, "model_type": model_type})
    arrays = generate(config.model, 3 * GATHER_CHUNK_ROWS + 5, seed=4)
    if dtypes == "legacy":
        arrays = {n: a.astype(np.int64 if "cat" in n or n == "Y" else np.float64) for n, a in arrays.items()}
    elif dtypes == "big_endian":
        arrays = {n: a.astype(a.dtype.newbyteorder(">")) for n, a in arrays.items()}
    write_npy_channel(tmp_path / "train", "train", "v0", arrays)
    source = open_channel(Channel("train", tmp_path / "train"), config.data, config.model)
    rows = np.random.default_rng(0).integers(0, len(arrays["Y"]), size=2 * GATHER_CHUNK_ROWS + 9)
    mine, legacy = source.batch(rows, model_type), to_batch(source.take(rows, source.names), model_type)
    assert mine.keys() == legacy.keys()
    for key, value in legacy.items():
        assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, key
        assert torch.equal(mine[key], value), key


def _gather_in_child(source: object, done: object) -> None:
    import torch

    torch.set_num_threads(2)
    source.batch(np.arange(8), "single")  # type: ignore[attr-defined]
    done.set()  # type: ignore[attr-defined]


def test_a_process_forked_after_a_gather_gathers_with_threads_of_its_own(tmp_path: Path) -> None:
    """The gather's thread pool, made in this process, reaches a forked child (a DataLoader worker)
    without its threads: the child must make its own pool, not wait on the dead one for ever."""
    import multiprocessing

    import torch

    source = channel(tmp_path, 40, "npy")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the pool is used only with more than one thread
    try:
        source.batch(np.arange(8), "single")
        context = multiprocessing.get_context("fork")
        done = context.Event()
        child = context.Process(target=_gather_in_child, args=(source, done))
        child.start()
        finished = done.wait(timeout=60)
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    finally:
        torch.set_num_threads(threads)
    assert finished and child.exitcode == 0, child.exitcode

"""Data-loading benchmark (not a test): this project's loader vs the legacy per-sample loader.

    .venv/bin/python bench/data_loading.py [--rows 24000] [--budget-mib 256]

1. Throughput at the EU production shape (L=51, 108 categorical, 51 numerical, 413 engineered;
   legacy dtypes int64/float64, memory-mapped `.npy`), batch 800, one epoch each, side by side:
   the legacy-style `Dataset.__getitem__` per sample + default collation (re-created from the
   spec §2.2, the legacy code is never vendored) against `BatchStream` (one vectorised gather per
   batch, `NpyChannel.batch`: chunks of rows gathered and cast in one pass, in threads). Prints
   samples/s of both and their ratio. 30 batches per epoch, so the start of an epoch (a new
   iterator, the permutation) weighs little, as in a real epoch of thousands of batches.
   Both run with torch's default intra-op threads, as a training job would.
2. Memory: streams a Parquet dataset 5x larger than `--budget-mib` through `BatchStream` in a
   fresh process and reports its peak RSS above the post-import baseline.

Output: one JSON object per line, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import open_channel
from tsa.data.convert import write_npy_channel
from tsa.data.loader import BatchStream, configure_allocator, make_loader
from tsa.data.parquet import write_parquet
from tsa.data.sharding import ShardSpec
from tsa.data.synth import generate

REPEATS = 3
EU = json.loads((Path(__file__).resolve().parents[1] / "hyperparameters" / "eu_single.json").read_text())


class LegacyStyleDataset(Dataset):
    """Per-sample dataset with the legacy `OrderSeqDataset` semantics (spec §2.2)."""

    def __init__(self, folder: Path) -> None:
        load = lambda name: np.load(folder / f"train_{name}_v0.npy", mmap_mode="r")  # noqa: E731
        self.x_seq_cat, self.x_seq_num, self.x_num = load("X_seq_cat"), load("X_seq_num"), load("X_num")
        self.y = load("Y").reshape(-1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, object]:
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # read-only memory maps
        seq_num = self.x_seq_num[i]
        return {
            "x_seq_cat": torch.Tensor(self.x_seq_cat[i]),
            "x_seq_num": torch.Tensor(seq_num[:, :-2]),
            "time_to_last": torch.Tensor(seq_num[:, -2]).unsqueeze(-1),
            "not_padded": torch.Tensor(seq_num[:, -1]),
            "x_engineered_num": self.x_num[i],
            "y": torch.Tensor(self.y[i]),
        }


def write_eu_channel(folder: Path, config: JobConfig, rows: int, dtypes: str) -> None:
    """EU-shaped synthetic arrays: legacy dtypes (int64 ids, float64 features) or compact (int32/float32)."""
    arrays = generate(config.model, rows, seed=0)
    if dtypes == "legacy":
        arrays = {name: a.astype(np.int64 if name in ("X_seq_cat", "Y") else np.float64) for name, a in arrays.items()}
    write_npy_channel(folder, "train", "v0", arrays)


def time_epoch(loader: DataLoader) -> tuple[int, float]:
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["y"])
    return count, time.perf_counter() - start


def throughput(folder: Path, config: JobConfig, batch_size: int, workers: int,
               dtypes: str) -> list[dict[str, object]]:
    for path in folder.glob("*.npy"):
        path.read_bytes()  # warm the page cache for both loaders alike
    results = []
    legacy = DataLoader(LegacyStyleDataset(folder), batch_size=batch_size, shuffle=True, num_workers=0)
    stream = BatchStream(open_channel(Channel("train", folder), config.data, config.model), "single", batch_size,
                         ShardSpec(shuffle=True, pad=True))
    loaders = [("legacy_per_sample", 0, legacy), ("batch_stream", 0, make_loader(stream, 0, False))]
    if workers:
        loaders.append(("batch_stream", workers, make_loader(stream, workers, False)))
    timings: dict[int, list[float]] = {i: [] for i in range(len(loaders))}
    samples = 0
    for _ in range(REPEATS):  # interleaved, so background load hits every loader alike
        for i, (_, _, loader) in enumerate(loaders):
            samples, seconds = time_epoch(loader)
            timings[i].append(seconds)
    for i, (name, num_workers, _) in enumerate(loaders):
        seconds = statistics.median(timings[i])
        results.append({"bench": "data_loading", "loader": name, "num_workers": num_workers, "config": "eu",
                        "dtypes": dtypes,
                        "batch_size": batch_size, "samples": samples, "median_seconds": round(seconds, 3),
                        "epochs": REPEATS, "samples_per_s": round(samples / seconds, 1)})
    return results


STREAM_SCRIPT = """
import resource, sys, json
from pathlib import Path
from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import open_channel
from tsa.data.loader import BatchStream, configure_allocator, make_loader
from tsa.data.sharding import ShardSpec
def rss_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
configure_allocator()
config = JobConfig.from_hyperparameters(json.loads(sys.argv[2]))
source = open_channel(Channel('train', Path(sys.argv[1])), config.data, config.model)
baseline = rss_mib()
peak, rows = baseline, 0
stream = BatchStream(source, 'single', 800, ShardSpec(shuffle=True, pad=True))
for batch in make_loader(stream, 0, False):
    rows += len(batch['y'])
    peak = max(peak, rss_mib())
print(json.dumps({'baseline_rss_mib': round(baseline, 1), 'peak_rss_mib': round(peak, 1), 'rows': rows}))
"""


def streaming_memory(folder: Path, config: JobConfig, budget_mib: int) -> dict[str, object]:
    """Write Parquet parts until the data is 5x the budget, then stream it in a fresh process."""
    target, written, part = 5 * budget_mib * 2**20, 0, 0
    while written < target:
        arrays = generate(config.model, 2000, seed=100 + part)
        path = folder / f"part-{part:05d}.parquet"
        write_parquet(path, arrays, row_group_rows=500)
        written += path.stat().st_size
        part += 1
    proc = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(folder), json.dumps(EU)],
                          capture_output=True, text=True, check=True)
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = measured["peak_rss_mib"] - measured["baseline_rss_mib"]
    return {"bench": "parquet_streaming_memory", "dataset_mib": round(written / 2**20, 1), "budget_mib": budget_mib,
            **measured, "rss_growth_mib": round(growth, 1), "within_budget": growth < budget_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24000)
    parser.add_argument("--batch-size", type=int, default=800)
    parser.add_argument("--budget-mib", type=int, default=320)
    parser.add_argument("--workers", type=int, default=0,
                        help="also time the batch stream with this many DataLoader workers (each ~60 MB batch then "
                             "crosses process boundaries through shared memory, which costs more than the gather)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--dtypes", choices=["legacy", "compact"], default="legacy",
                        help="array dtypes of the .npy files: as the legacy preprocessing wrote them, or int32/float32")
    args = parser.parse_args()
    configure_allocator()  # what `tsa train` does; applies to both loaders alike
    config = JobConfig.from_hyperparameters(EU)
    with tempfile.TemporaryDirectory() as tmp:
        write_eu_channel(Path(tmp) / "npy", config, args.rows, args.dtypes)
        results = throughput(Path(tmp) / "npy", config, args.batch_size, args.workers, args.dtypes)
        for result in results:
            print(json.dumps(result), flush=True)
        memory = {} if args.skip_memory else streaming_memory(Path(tmp) / "parquet", config, args.budget_mib)
        if memory:
            print(json.dumps(memory), flush=True)
    legacy = results[0]["samples_per_s"]
    ratios = {f"speedup_workers_{r['num_workers']}": round(r["samples_per_s"] / legacy, 1)  # type: ignore[operator]
              for r in results[1:]}
    print(json.dumps({"bench": "data_loading_summary", **ratios,
                      "parquet_rss_growth_mib": memory.get("rss_growth_mib"), "budget_mib": args.budget_mib}))


if __name__ == "__main__":
    main()

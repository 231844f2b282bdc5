"""Fault handling below the job: the SIGTERM flag, the bounded host wait, `tsa data convert`'s errors.

Run: .venv/bin/pytest tests/unit/test_faults.py   (the job-level rows are in `test_catalogue.py`)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_sigterm_only_sets_a_flag_and_the_next_safe_point_stops() -> None:
    """The handler never raises where the interpreter happens to be (e.g. inside logging)."""
    import signal

    from tsa.training.stop import STOP, StopRequested, check_stop, install_stop_handler

    previous = signal.getsignal(signal.SIGTERM)
    try:
        install_stop_handler()
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here; nothing is raised by the handler itself
        assert STOP.requested
        with pytest.raises(StopRequested, match="training stopped by SIGTERM before training"):
            check_stop("before training")
    finally:
        STOP.requested = False
        signal.signal(signal.SIGTERM, previous)


def test_a_host_that_never_resolves_fails_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded wait with log lines, then the host named (no real DNS query leaves the sandbox here)."""
    import socket
    import time

    from tsa.errors import ClusterError
    from tsa.training import cluster

    calls = []

    def unresolvable(host: str, *args: object) -> None:
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(cluster, "POLL_S", 0.05)
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"^host 'algo-1' of resourceconfig.json did not resolve within 0.3 s"):
        cluster.resolve_hosts(["algo-1", "algo-2"], timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5 and calls.count("algo-1") > 1 and "algo-2" in calls
    monkeypatch.undo()
    cluster.resolve_hosts(["localhost"], timeout_s=1)  # resolves from /etc/hosts


def test_convert_refuses_an_object_array_naming_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    import numpy as np

    source = tmp_path / "train"
    source.mkdir()
    np.save(source / "train_Y_v0.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    proc = subprocess.run([sys.executable, "-m", "tsa", "data", "convert", str(source), str(tmp_path / "out"),
                           "--to", "parquet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "file 'train_Y_v0.npy' array 'Y': not a readable .npy file" in proc.stderr
    assert "Traceback" not in proc.stderr



@pytest.mark.parametrize(("key", "value", "available"), [("batch_size", "100000", 2**31),
                                                         ("n_layers_order", "4000", 2**36),
                                                         ("dim_embedding_table", "4096", 2**33)])
def test_the_memory_refusal_names_the_largest_value_that_fits(key: str, value: str, available: int) -> None:
    """The suggested value fits the budget, and one step more does not (everything else unchanged)."""
    import re

    from tsa.config import JobConfig
    from tsa.contract import ResourceConfig
    from tsa.errors import ConfigError
    from tsa.training.budget import MEMORY_HEADROOM, check_memory, memory_needed
    from tsa.training.plan import plan_run

    hyperparameters = {"n_cat_features": "40", "n_num_features": "33", "n_embedding": "120", "num_heads": "2",
                       "dim_embedding_table": "16", key: value}
    config = JobConfig.from_hyperparameters(hyperparameters)
    world = plan_run(config.runtime, ResourceConfig(), gpus=0).world
    with pytest.raises(ConfigError, match="lower one of them: at most ") as refused:
        check_memory(config.model, config.train.batch_size, world, available=available)
    suggested = int(re.search(rf"\b{key}=(\d+)", str(refused.value)).group(1))
    step = 2 if key == "dim_embedding_table" else 1
    fitting = JobConfig.from_hyperparameters({**hyperparameters, key: str(suggested)})
    larger = JobConfig.from_hyperparameters({**hyperparameters, key: str(suggested + step)})
    assert (memory_needed(fitting.model, fitting.train.batch_size) <= MEMORY_HEADROOM * available
            < memory_needed(larger.model, larger.train.batch_size))
    check_memory(fitting.model, fitting.train.batch_size, plan_run(fitting.runtime, ResourceConfig(), gpus=0).world,
                 available=available)

"""The cluster before training: every host resolves, joins, and agrees, or all hosts stop at once.

A multi-host job meets once before Lightning builds its process group (`meet`):
1. every training host's name resolves (`host_resolution_timeout_s`); when `MASTER_ADDR` is in
   the environment (the local runner emulating hosts on one machine) only that address is resolved;
2. each host's launcher process (local rank 0) publishes a `HostReport` in a `TCPStore` that the
   master host serves on `MASTER_PORT + 1`, and reads every other host's (`rendezvous_timeout_s`):
   its processes, its config's digest, its checkpoint, the rows of its host-sharded channels, and
   the error its own checks raised, if any;
3. every host decides from the same reports (`agree`), so all go on together or all refuse with
   the same first line: a host that failed its checks, hosts with different process counts
   (instance groups of other instance types), configs or checkpoints. No host can enter a process
   group that another host will never join.
Every wait is polled in short steps with a deadline and a message naming what it waited for;
SIGTERM ends it within a second (exit 143). The agreed facts the training needs (`HostShards`)
reach the ranks Lightning starts through one environment variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch.distributed import DistError, TCPStore

from tsa.config import JobConfig
from tsa.contract import ResourceConfig
from tsa.data.sharding import HostShards
from tsa.errors import ClusterError, JobError
from tsa.training.stop import check_stop, wait_in_thread
from tsa.training.world import WorldLayout

log = logging.getLogger("tsa.cluster")

RENDEZVOUS_PORT_OFFSET = 1  # the handshake's port: MASTER_PORT + 1 (Lightning's process group takes MASTER_PORT)
SHARDS_ENV = "TSA_HOST_SHARDS"  # the agreed HostShards, for the ranks Lightning starts on this host
POLL_S = 0.2
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class HostReport:
    """What one host tells the others before training."""

    host: str
    processes: int
    accelerator: str
    config_digest: str
    checkpoint: str  # "none", or the digests of the checkpoint files it would resume from
    sharded_rows: dict[str, int] = field(default_factory=dict)  # host-sharded channel -> this host's rows
    error: str | None = None  # the first line of the error its own checks raised


def config_digest(config: JobConfig) -> str:
    return hashlib.sha1(json.dumps(config.resolved(), sort_keys=True).encode()).hexdigest()


def checkpoint_fingerprint(files: Sequence[Path]) -> str:
    """`name sha1` of each file present, or "none": hosts that resume must hold the same checkpoint."""
    parts = []
    for path in files:
        if path.is_file():
            digest = hashlib.sha1()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            parts.append(f"{path.name} sha1 {digest.hexdigest()[:12]}")
    return ", ".join(parts) or "none"


# --- waiting ------------------------------------------------------------------------------------
class _Deadline:
    """A wait's deadline, its progress log, and SIGTERM (checked every `POLL_S`)."""

    def __init__(self, timeout_s: float, waiting_for: str) -> None:
        self.timeout_s = timeout_s
        self.waiting_for = waiting_for
        self.start = time.monotonic()
        self._logged = self.start

    @property
    def passed(self) -> bool:
        return time.monotonic() - self.start >= self.timeout_s

    @property
    def remaining_s(self) -> float:
        return max(self.timeout_s - (time.monotonic() - self.start), 0.0)

    def pause(self, detail: Callable[[], str] = lambda: "") -> None:
        check_stop(f"while waiting for {self.waiting_for}")
        time.sleep(POLL_S)
        check_stop(f"while waiting for {self.waiting_for}")
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.info("waiting for %s (%.0f of %d s)%s", self.waiting_for, now - self.start, self.timeout_s, detail())


def _resolve(host: str, deadline: _Deadline) -> str | None:
    """None once `host` resolves, else the resolver's error; neither a slow resolver nor SIGTERM waits for
    the lookup (`wait_in_thread`)."""
    errors: list[str] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
        except OSError as exc:
            errors.append(exc.strerror or str(exc))

    if not wait_in_thread(lookup, deadline.remaining_s, f"while waiting for {deadline.waiting_for}"):
        return "no answer from the resolver"
    return errors[0] if errors else None


def resolve_hosts(hosts: Sequence[str], timeout_s: float, describe: Callable[[str], str] = str) -> None:
    """Wait until every name in `hosts` resolves; after `timeout_s`, fail naming the first that does not."""
    pending = list(hosts)
    deadline = _Deadline(timeout_s, f"host(s) {', '.join(pending)} to resolve")
    while True:
        errors = {host: _resolve(host, deadline) for host in pending}
        pending = [host for host, error in errors.items() if error is not None]
        if not pending:
            return
        if deadline.passed:
            host = pending[0]
            raise ClusterError(
                f"host '{describe(host)}' of resourceconfig.json did not resolve within {timeout_s:g} s "
                f"(host_resolution_timeout_s; {errors[host]}): the host did not start or the cluster's DNS does "
                "not know it; check resourceconfig.json's hosts, or raise host_resolution_timeout_s"
            )
        deadline.waiting_for = f"host(s) {', '.join(pending)} to resolve"
        deadline.pause()


# --- the handshake ------------------------------------------------------------------------------
def _master_address(resources: ResourceConfig) -> tuple[str, int]:
    port = int(os.environ.get("MASTER_PORT") or 7777) + RENDEZVOUS_PORT_OFFSET
    return os.environ.get("MASTER_ADDR") or resources.master_host, port


def _open_store(resources: ResourceConfig, deadline: _Deadline) -> TCPStore:
    """The master serves the store; the others connect once the master's port answers (probed quietly:
    the store's own client logs a stack trace for every refused attempt)."""
    address, port = _master_address(resources)
    timeout = timedelta(seconds=max(deadline.timeout_s, 1))
    if resources.node_rank == 0:
        try:
            return TCPStore(address, port, is_master=True, wait_for_workers=False, timeout=timeout)
        except DistError as exc:
            raise ClusterError(f"the master host {resources.current_host} cannot serve the rendezvous on port {port} "
                               f"({str(exc).splitlines()[0]}): free the port (MASTER_PORT + 1)") from exc
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                break
        except OSError as exc:
            if deadline.passed:
                raise ClusterError(
                    f"the master host '{resources.describe_host(resources.master_host)}' did not answer at "
                    f"{address}:{port} within {deadline.timeout_s:g} s (rendezvous_timeout_s; {exc.strerror or exc}): "
                    "it did not start, failed before training, or the network blocks the port; see its log"
                ) from exc
            deadline.pause()
    return TCPStore(address, port, is_master=False, timeout=timeout)


def _wait_for_keys(store: TCPStore, keys: Mapping[str, str], deadline: _Deadline, what: str) -> None:
    """Until every key is in the store; `keys` maps each key to the host that sets it."""
    def missing() -> list[str]:
        return [host for key, host in keys.items() if not store.check([key])]

    while missing():
        if deadline.passed:
            hosts = missing()
            raise ClusterError(
                f"host(s) {', '.join(hosts)} did not {what} within {deadline.timeout_s:g} s "
                "(rendezvous_timeout_s): they did not start, failed before training, or cannot reach the master; "
                "see their logs"
            )
        deadline.pause(lambda: f"; missing: {', '.join(missing())}")


def exchange(report: HostReport, resources: ResourceConfig, timeout_s: float) -> list[HostReport]:
    """Publish this host's report and return every host's, in node order (collective across hosts)."""
    hosts = resources.ordered_hosts
    deadline = _Deadline(timeout_s, f"the hosts {', '.join(hosts)} to join")
    address, port = _master_address(resources)
    log.info("rendezvous: waiting up to %g s for the hosts %s to join at %s:%d", timeout_s, ", ".join(hosts),
             address, port)
    store = _open_store(resources, deadline)
    rank = resources.node_rank
    try:
        store.set(f"report/{rank}", json.dumps(asdict(report)))
        _wait_for_keys(store, {f"report/{r}": host for r, host in enumerate(hosts)}, deadline, "join the job")
        reports = [HostReport(**json.loads(store.get(f"report/{r}"))) for r in range(len(hosts))]
        store.set(f"read/{rank}", "1")
        if rank == 0:  # the store lives in this process: serve it until every host has read every report
            _wait_for_keys(store, {f"read/{r}": host for r, host in enumerate(hosts)},
                           _Deadline(timeout_s, "the hosts to read the reports"), "read the reports")
    except DistError as exc:
        raise ClusterError(f"lost the rendezvous with the master host {resources.master_host} "
                           f"({str(exc).splitlines()[0]}): see the master's log") from exc
    return reports


def agree(reports: Sequence[HostReport], resources: ResourceConfig) -> HostShards:
    """The one decision every host makes from the same reports: go on together, or the same refusal."""
    failed = [r for r in reports if r.error]
    if failed:
        first = failed[0]
        raise ClusterError(f"host {resources.describe_host(first.host)} failed its checks before training, so every "
                           f"host stops: {first.error}")
    describe = resources.describe_host
    if len({(r.processes, r.accelerator) for r in reports}) > 1:
        counts = "; ".join(f"{describe(r.host)} {r.processes} {r.accelerator} process(es)" for r in reports)
        fix = ("name the instance groups to train on, all of one instance type (distribution={'instance_groups': "
               "[...]}, hyperparameter 'sagemaker_distribution_instance_groups')" if resources.instance_groups
               else "use one instance type for every host")
        raise ClusterError(f"the hosts would start different numbers of processes ({counts}): one training world "
                           f"needs the same number on every host; {fix}")
    if len({r.config_digest for r in reports}) > 1:
        digests = "; ".join(f"{r.host} {r.config_digest[:12]}" for r in reports)
        raise ClusterError(f"the hosts hold different hyperparameters (config digests: {digests}): every host must "
                           "run the same hyperparameters.json")
    if len({r.checkpoint for r in reports}) > 1:
        held = "; ".join(f"{r.host}: {r.checkpoint}" for r in reports)
        raise ClusterError(
            f"the hosts hold different checkpoints in their checkpoint folders ({held}): every host resumes from the "
            "same files (SageMaker restores checkpoint_s3_uri to every host); give every host the same checkpoint "
            "folder, or set ignore_checkpoint=true to train from the start"
        )
    channels = sorted({name for r in reports for name in r.sharded_rows})
    rows = {name: tuple(r.sharded_rows.get(name, 0) for r in reports) for name in channels}
    return HostShards(node_rank=resources.node_rank, rows=rows)


def meet(resources: ResourceConfig, config: JobConfig, world: WorldLayout, checkpoint_files: Sequence[Path],
         sharded_rows: Mapping[str, int], local_error: JobError | None = None) -> HostShards:
    """Resolve, exchange and agree (a multi-host job's launcher process).

    `checkpoint_files`: what this host would resume from (when `last.ckpt`, the first, exists);
    `sharded_rows`: this host's rows of its host-sharded channels; `local_error`: this host's own
    failed check, reported to the others first and then raised here.
    """
    runtime = config.runtime
    master = os.environ.get("MASTER_ADDR")
    resolve_hosts([master] if master else resources.ordered_hosts, runtime.host_resolution_timeout_s,
                  resources.describe_host)
    resumes = not runtime.ignore_checkpoint and checkpoint_files[0].is_file()
    report = HostReport(host=resources.current_host, processes=world.devices, accelerator=world.accelerator,
                        config_digest=config_digest(config),
                        checkpoint=checkpoint_fingerprint(checkpoint_files) if resumes else "none",
                        sharded_rows=dict(sharded_rows),
                        error=str(local_error).splitlines()[0] if local_error is not None else None)
    reports = exchange(report, resources, runtime.rendezvous_timeout_s)
    if local_error is not None:
        raise local_error
    shards = agree(reports, resources)
    log.info("cluster: %d hosts agree (%d %s process(es) each%s)", len(reports), report.processes,
             report.accelerator, f"; host-sharded channels: {dict(shards.rows)}" if shards.rows else "")
    return shards


# A collective whose peer is gone: gloo's transport errors are plain RuntimeErrors naming gloo; NCCL's and
# the store's are DistErrors.
PEER_LOST_MARKS = ("gloo/transport", "Connection closed by peer", "Connection reset by peer")


@contextlib.contextmanager
def peers_watched(world: WorldLayout, checkpoint_dir: Path) -> Iterator[None]:
    """Training's collectives: a peer process that died or vanished is the environment's failure (exit 2),
    named as such, not an internal error of this process."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        lost = isinstance(exc, DistError) or any(mark in text for mark in PEER_LOST_MARKS)
        if world.world_size <= 1 or not lost:
            raise
        raise ClusterError(
            f"lost another process of the job during training ({text.splitlines()[0][:300]}): a rank on this or "
            "another host failed, was killed or lost the network; see the other hosts' logs; the job resumes from "
            f"'{checkpoint_dir}' when it runs again"
        ) from exc


def export_shards(shards: HostShards) -> None:
    """For the ranks Lightning starts on this host (they inherit the environment, not the handshake)."""
    os.environ[SHARDS_ENV] = json.dumps({"node_rank": shards.node_rank, "rows": dict(shards.rows)})


def inherited_shards() -> HostShards:
    """What this host's launcher agreed with the others (one host: nothing is sharded across hosts)."""
    text = os.environ.get(SHARDS_ENV)
    if not text:
        return HostShards()
    data: dict[str, Any] = json.loads(text)
    return HostShards(node_rank=data["node_rank"], rows={k: tuple(v) for k, v in data["rows"].items()})

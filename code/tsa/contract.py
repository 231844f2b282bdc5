"""Job contract: where SageMaker puts things under `/opt/ml`, and how we read them.

Input: a root directory (the real `/opt/ml`, `$SAGEMAKER_BASE_DIR`, or a temp dir in tests
and local mode). Output: `JobPaths`, the raw hyperparameter map, the channel descriptions and
the resource config. Nothing here interprets hyperparameter *values*: typed decoding happens
in `config.py`, field by field.

Non-obvious: `resourceconfig.json` and `inputdataconfig.json` are optional (default: one host
`localhost`, channels found on disk), and local mode omits `S3DistributionType` and
`instance_groups`; `checkpointconfig.json` exists when the job has a `CheckpointConfig`, and its
`LocalPath` is the folder SageMaker syncs with S3. `hosts` is sorted as strings by SageMaker
(`algo-10` before `algo-2`), so node ranks come from `ResourceConfig.ordered_hosts`, which sorts
by the numeric suffix.
Reference: ../shared/docs/sagemaker_contract.md §1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tsa.errors import ChannelError, ConfigError, OutputError

DEFAULT_BASE_DIR = Path("/opt/ml")
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"

# Channel name -> accepted folder names under input/data, canonical name first.
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "vali", "val"),
    "calibration": ("calibration", "cali"),
    "test": ("test",),
}
# Channels a training job cannot do without, and why (`tsa train` and `tsa validate JOB_DIR` alike).
REQUIRED_CHANNELS = {
    "train": "a training job needs the training data",
    "validation": "training selects the best model by validation AUC, as the legacy job did",
}

# SageMaker API limits on CreateTrainingJob.HyperParameters (botocore service model).
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_VALUE_CHARS = 2500

HyperparameterEncoding = Literal["str", "json", "v3"]


def metric_definitions() -> list[dict[str, str]]:
    """The shipped SageMaker metric regexes (they match the job's `METRIC ...;` lines)."""
    from importlib import resources

    return json.loads(resources.files("tsa").joinpath("metric_definitions.json").read_text())


@dataclass(frozen=True)
class JobPaths:
    """Every path of the `/opt/ml` layout, derived from one root (the one home of the layout)."""

    root: Path

    @classmethod
    def from_root(cls, root: str | os.PathLike[str] | None = None) -> JobPaths:
        """Paths under `root`, else `$SAGEMAKER_BASE_DIR`, else `/opt/ml`."""
        if root is None:
            root = os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR
        return cls(Path(root))

    @property
    def config_dir(self) -> Path:
        """`input/config`: SageMaker writes the job's three JSON files here before the container starts."""
        return self.root / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        """The estimator's hyperparameters, every value a string."""
        return self.config_dir / "hyperparameters.json"

    @property
    def inputdataconfig_file(self) -> Path:
        """Per channel: input mode (File, FastFile, Pipe), S3 distribution, content type."""
        return self.config_dir / "inputdataconfig.json"

    @property
    def resourceconfig_file(self) -> Path:
        """This host's name, every host of the job, the network interface."""
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        """`input/data`: one folder per channel, downloaded (File) or mounted (FastFile) by SageMaker."""
        return self.root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        """`model`: SageMaker tars it into model.tar.gz when the job ends (successfully)."""
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        """`output`: SageMaker reads `failure` from here and uploads the rest as output.tar.gz."""
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        """`output/data`: predictions, plots and traces (in output.tar.gz)."""
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        """The failure reason SageMaker shows (first 1024 characters)."""
        return self.output_dir / "failure"

    @property
    def success_file(self) -> Path:
        """Written when the job succeeded."""
        return self.output_dir / "success"

    @property
    def checkpointconfig_file(self) -> Path:
        """Written when the job has a `CheckpointConfig`: `S3Uri` and the `LocalPath` SageMaker syncs with it."""
        return self.config_dir / "checkpointconfig.json"

    @property
    def checkpoint_dir(self) -> Path:
        """`checkpoints`: SageMaker syncs it with `checkpoint_s3_uri` (down at start, up while running)."""
        return self.root / "checkpoints"

    def tensorboard(self, configured: str | None) -> Path | None:
        """The TensorBoard folder: `tensorboard_dir`, else `output/tensorboard` if it exists (SageMaker syncs it)."""
        if configured:
            return Path(configured)
        default = self.output_dir / "tensorboard"
        return default if default.is_dir() else None

    @property
    def trace_dir(self) -> Path:
        """`output/data/trace`: the run trace (`trace=true`), one JSON-lines file per rank."""
        return self.output_data_dir / "trace"

    @property
    def lightning_dir(self) -> Path:
        """Lightning's working folder (`default_root_dir`; the job turns its loggers and checkpoints off)."""
        return self.output_dir / ".lightning"


SHARDED_BY_S3_KEY = "ShardedByS3Key"  # S3DistributionType: each host gets some of the channel's S3 objects


@dataclass(frozen=True)
class Channel:
    """One input channel: its canonical name, folder and SageMaker input settings."""

    name: str
    path: Path
    input_mode: str = "File"
    distribution: str = "FullyReplicated"
    content_type: str | None = None

    @property
    def sharded_by_host(self) -> bool:
        """SageMaker already gave each host its own part of the objects."""
        return self.distribution == SHARDED_BY_S3_KEY


@dataclass(frozen=True)
class InstanceGroup:
    """One instance group of a heterogeneous cluster: its name, instance type and hosts."""

    name: str
    instance_type: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class ResourceConfig:
    """The cluster as `resourceconfig.json` describes it (one `localhost` if absent).

    `hosts` are the hosts this job trains on: every host of the job, or, when the estimator names
    the groups to distribute over (`restricted_to`), the hosts of those groups.
    """

    current_host: str = "localhost"
    hosts: tuple[str, ...] = ("localhost",)
    network_interface_name: str | None = None
    current_instance_type: str | None = None
    current_group_name: str | None = None
    instance_groups: tuple[InstanceGroup, ...] = ()
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # the file, for the toolkit

    @property
    def trains_here(self) -> bool:
        """Whether this host is one of the training hosts (a host of another instance group is not)."""
        return self.current_host in self.hosts

    def group_of(self, host: str) -> InstanceGroup | None:
        return next((group for group in self.instance_groups if host in group.hosts), None)

    def describe_host(self, host: str) -> str:
        """`algo-2` or `algo-2 (group 'train', ml.g5.xlarge)`: how messages name a host."""
        group = self.group_of(host)
        return f"{host} (group '{group.name}', {group.instance_type})" if group else host

    def restricted_to(self, group_names: Sequence[str]) -> ResourceConfig:
        """The same cluster training on the hosts of `group_names` only (the estimator's distribution groups)."""
        known = [group.name for group in self.instance_groups]
        unknown = [name for name in group_names if name not in known]
        if unknown:
            raise ConfigError([f"hyperparameter '{DISTRIBUTION_GROUPS_KEY}' names instance group(s) {unknown} that "
                               f"resourceconfig.json does not have: allowed are {known}"])
        hosts = tuple(host for group in self.instance_groups if group.name in group_names for host in group.hosts)
        return replace(self, hosts=hosts)

    @property
    def ordered_hosts(self) -> list[str]:
        """Hosts in numeric `algo-N` order, identical on every node (master = first)."""
        return sorted(self.hosts, key=_host_sort_key)

    @property
    def node_rank(self) -> int:
        return self.ordered_hosts.index(self.current_host)

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def master_host(self) -> str:
        return self.ordered_hosts[0]


def _host_sort_key(host: str) -> tuple[str, int, str]:
    match = re.fullmatch(r"(.*?)(\d+)(\D*)", host)
    if match is None:
        return (host, -1, "")
    return (match.group(1), int(match.group(2)), match.group(3))


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (json.loads would silently keep the last)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def read_json_object(path: Path, *, required: bool) -> dict[str, Any] | None:
    """A JSON file holding an object (None when it is absent and optional); else a `ConfigError`.

    Duplicate keys are refused: the last one would win silently.
    """
    if not path.exists():
        if required:
            raise ConfigError([f"file '{path}' is missing: the job needs it (SageMaker writes it)"])
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise ConfigError([f"file '{path}' names key '{exc}' twice: keep one (JSON readers keep only the last)"]) \
            from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"file '{path}' is not valid JSON ({exc}): write a JSON object"]) from exc
    if not isinstance(data, dict):
        kind = "null" if data is None else f"a {type(data).__name__}"
        raise ConfigError([f"file '{path}' holds {kind}: expected a JSON object"])
    return data


def read_resource_config(paths: JobPaths) -> ResourceConfig:
    """`resourceconfig.json`, or one host named `localhost` when it is absent."""
    data = read_json_object(paths.resourceconfig_file, required=False)
    if data is None:
        return ResourceConfig()
    file = paths.resourceconfig_file
    hosts = data.get("hosts")
    current = data.get("current_host")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ConfigError([f"file '{file}': 'hosts' = {hosts!r}: expected a non-empty list of host names"])
    repeated = sorted({h for h in hosts if hosts.count(h) > 1})
    if repeated:
        raise ConfigError([f"file '{file}': 'hosts' = {hosts!r} names {repeated} twice: every host once"])
    if current not in hosts:
        raise ConfigError([f"file '{file}': 'current_host' = {current!r}: expected one of {hosts}"])
    groups = _instance_groups(file, data.get("instance_groups"), hosts)
    group_name = data.get("current_group_name")
    if groups and group_name not in [group.name for group in groups]:
        raise ConfigError([f"file '{file}': 'current_group_name' = {group_name!r}: expected one of "
                           f"{[group.name for group in groups]} (the instance_groups)"])
    return ResourceConfig(
        current_host=current,
        hosts=tuple(hosts),
        network_interface_name=data.get("network_interface_name"),
        current_instance_type=data.get("current_instance_type"),
        current_group_name=group_name,
        instance_groups=groups,
        raw=data,
    )


def _instance_groups(file: Path, value: Any, hosts: list[str]) -> tuple[InstanceGroup, ...]:
    """`instance_groups`: each a name, an instance type and hosts; together every host exactly once."""
    if value is None:
        return ()
    shape = "expected a list of {instance_group_name, instance_type, hosts}"
    if not isinstance(value, list):
        raise ConfigError([f"file '{file}': 'instance_groups' = {value!r}: {shape}"])
    groups = []
    for item in value:
        ok = (isinstance(item, dict) and isinstance(item.get("instance_group_name"), str)
              and isinstance(item.get("instance_type"), str) and isinstance(item.get("hosts"), list)
              and all(isinstance(host, str) for host in item["hosts"]))
        if not ok:
            raise ConfigError([f"file '{file}': 'instance_groups' entry {item!r}: {shape}"])
        groups.append(InstanceGroup(item["instance_group_name"], item["instance_type"], tuple(item["hosts"])))
    listed = [host for group in groups for host in group.hosts]
    if sorted(listed) != sorted(hosts):
        raise ConfigError([f"file '{file}': the hosts of 'instance_groups' ({sorted(listed)}) are not the 'hosts' "
                           f"({sorted(hosts)}): every host must be in exactly one group"])
    return tuple(groups)


DISTRIBUTION_GROUPS_KEY = "sagemaker_distribution_instance_groups"  # distribution={"instance_groups": [...]}


def training_resources(resources: ResourceConfig, hyperparameters: Mapping[str, Any]) -> ResourceConfig:
    """The hosts this job trains on: the estimator's distribution groups when it names them, else every host."""
    value = hyperparameters.get(DISTRIBUTION_GROUPS_KEY)
    if value is None or not resources.instance_groups:
        return resources
    names = json.loads(value) if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError([f"hyperparameter '{DISTRIBUTION_GROUPS_KEY}' = {value!r}: expected a non-empty list of "
                           "instance group names"])
    return resources.restricted_to(names)


def choose_checkpoint_dir(paths: JobPaths, configured: str | None) -> tuple[Path, str]:
    """The checkpoint folder and where it comes from: `checkpointconfig.json`'s `LocalPath` (the folder
    SageMaker syncs with S3), else the `checkpoint_dir` hyperparameter, else `checkpoints`; a
    `checkpoint_dir` that names another folder than `LocalPath` is refused (SageMaker would not sync it,
    so a spot job would resume from nothing).
    """
    data = read_json_object(paths.checkpointconfig_file, required=False) or {}
    local = data.get("LocalPath")
    if local is not None and (not isinstance(local, str) or not local.startswith("/")):
        raise ConfigError([f"file '{paths.checkpointconfig_file}': 'LocalPath' = {local!r}: expected an absolute "
                           "folder path"])
    if local and configured and Path(configured).resolve() != Path(local).resolve():
        raise ConfigError([
            f"hyperparameter 'checkpoint_dir' = '{configured}' differs from CheckpointConfig.LocalPath = '{local}' "
            f"({paths.checkpointconfig_file}), the folder SageMaker syncs with S3: remove checkpoint_dir, or set "
            "it to the same folder"
        ])
    if local:
        return Path(local), f"CheckpointConfig.LocalPath of {paths.checkpointconfig_file.name}"
    if configured:
        return Path(configured), "hyperparameter 'checkpoint_dir'"
    return paths.checkpoint_dir, "the default; set by hyperparameter 'checkpoint_dir' or CheckpointConfig.LocalPath"


def check_writable(folder: Path, what: str, needed_bytes: int = 0) -> None:
    """Create `folder` if needed, write a file into it and check its free space against an estimate.

    An unusable output folder fails at start, not after the training run.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tsa-write-check-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{what} '{folder}' is not writable ({reason}): the job writes there; "
                          "make it a writable folder (permissions, disk space, not a file)") from exc
    if free < needed_bytes:
        raise OutputError(f"{what} '{folder}' has {free / 2**20:.1f} MiB free, but the job writes about "
                          f"{needed_bytes / 2**20:.1f} MiB there (estimated from the model's size): free space "
                          "or give the job a larger volume")


def canonical_channel_name(folder: str) -> str | None:
    """Map a channel folder name (`vali`, `cali`, ...) to its canonical name."""
    for name, aliases in CHANNEL_ALIASES.items():
        if folder in aliases:
            return name
    return None


def read_channels(paths: JobPaths) -> dict[str, Channel]:
    """Channels present under `input/data`, keyed by canonical name.

    Raises `ChannelError` when a required channel is missing, two folders alias the same channel,
    or a channel uses Pipe mode.
    """
    config = read_json_object(paths.inputdataconfig_file, required=False) or {}
    for folder, settings in config.items():
        mode = settings.get("TrainingInputMode", "File") if isinstance(settings, dict) else "File"
        if mode == "Pipe":
            raise ChannelError(
                f"channel '{folder}': TrainingInputMode = 'Pipe' is not supported: "
                "allowed are 'File' and 'FastFile'; set input_mode='FastFile' (or 'File') on the channel"
            )
    found: dict[str, Channel] = {}
    if paths.data_dir.is_dir():
        for folder in sorted(p for p in paths.data_dir.iterdir() if p.is_dir()):
            name = canonical_channel_name(folder.name)
            if name is None:
                continue
            if name in found:
                raise ChannelError(
                    f"channels '{found[name].path.name}' and '{folder.name}' both name the {name} "
                    f"channel: keep only one of {list(CHANNEL_ALIASES[name])}"
                )
            settings = config.get(folder.name, {}) if isinstance(config.get(folder.name), dict) else {}
            found[name] = Channel(
                name=name,
                path=folder,
                input_mode=settings.get("TrainingInputMode", "File"),
                distribution=settings.get("S3DistributionType", "FullyReplicated"),
                content_type=settings.get("ContentType"),
            )
    for name, why in REQUIRED_CHANNELS.items():
        if name not in found:
            folders = " or ".join(f"'{paths.data_dir / alias}'" for alias in CHANNEL_ALIASES[name])
            raise ChannelError(f"channel '{name}' is missing: no folder {folders}; {why}")
    return found


def encode_hyperparameters(values: Mapping[str, Any], encoding: HyperparameterEncoding) -> dict[str, str]:
    """Encode typed values the way a launcher writes `hyperparameters.json`.

    `str`: SDK v2 generic Estimator (`str(value)`); `json`: SDK v2 framework estimators
    (`json.dumps` of every value); `v3`: SDK v3 ModelTrainer (strings unchanged, the rest
    `json.dumps`). See ../shared/docs/sagemaker_contract.md §1.3.
    """
    if encoding == "str":
        return {key: str(value) for key, value in values.items()}
    if encoding == "json":
        return {key: json.dumps(value) for key, value in values.items()}
    if encoding == "v3":
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
    raise ValueError(f"unknown hyperparameter encoding {encoding!r}")


def check_wire_limits(raw: Mapping[str, Any]) -> None:
    """Enforce SageMaker's limits (100 keys, 2500 characters a value) on `hyperparameters.json`."""
    problems = []
    if len(raw) > MAX_HYPERPARAMETERS:
        problems.append(
            f"hyperparameters.json has {len(raw)} keys: SageMaker allows at most {MAX_HYPERPARAMETERS}; "
            "move the rest into a JSON file named by the 'config_file' hyperparameter"
        )
    for key, value in raw.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > MAX_HYPERPARAMETER_VALUE_CHARS:
            problems.append(
                f"hyperparameter '{key}' = {text[:40]!r}... has {len(text)} characters: SageMaker allows at "
                f"most {MAX_HYPERPARAMETER_VALUE_CHARS}; put it into a JSON file in a channel and name that "
                "file with the 'config_file' hyperparameter"
            )
    if problems:
        raise ConfigError(problems)


def resolve_config_file(raw: Mapping[str, Any], data_dir: Path) -> dict[str, Any]:
    """Merge the JSON file named by `config_file` (`<channel>/<path>` under `data_dir`).

    Keys given directly in the hyperparameters win over the file's.
    """
    merged = dict(raw)
    name = merged.pop("config_file", None)
    if name is None:
        return merged
    name = name.strip('"') if isinstance(name, str) else name
    if not isinstance(name, str) or not name:
        raise ConfigError([f"hyperparameter 'config_file' = {name!r}: expected a path '<channel>/<file>.json'"])
    root = data_dir.resolve()
    path = (data_dir / name).resolve()
    if root not in path.parents:
        raise ConfigError([f"hyperparameter 'config_file' = {name!r}: must name a file inside {data_dir} (a channel)"])
    if not path.is_file():
        raise ConfigError(
            [f"hyperparameter 'config_file' = {name!r}: no such file {path}; give '<channel>/<file>.json'"]
        )
    content = read_json_object(path, required=True)
    assert content is not None
    if "config_file" in content:
        raise ConfigError([f"config_file '{path}' names another config_file: nesting is not supported"])
    return {**content, **merged}


def load_hyperparameter_file(path: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """A hyperparameters file as every tsa command reads it (the job, validate, launch, local mode).

    A JSON object within SageMaker's limits, with the file named by `config_file` merged in,
    resolved under `data_dir` (the job's `input/data`; default: the file's own folder, so a
    hyperparameters file next to a `train/` folder validates before it is uploaded).
    """
    raw = read_json_object(path, required=True)
    assert raw is not None
    check_wire_limits(raw)
    return resolve_config_file(raw, path.parent if data_dir is None else data_dir)


def load_hyperparameters(paths: JobPaths) -> dict[str, Any]:
    """The job's `hyperparameters.json` (SageMaker always writes one; the model needs its shapes from it)."""
    if not paths.hyperparameters_file.exists():
        raise ConfigError([
            f"file '{paths.hyperparameters_file}' is missing: the job needs the estimator's hyperparameters "
            "(at least n_cat_features, n_num_features, n_embedding); see `tsa schema`"
        ])
    return load_hyperparameter_file(paths.hyperparameters_file, paths.data_dir)

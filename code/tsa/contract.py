"""Job contract: where SageMaker puts things under `/opt/ml`, and how we read them.

Input: a root directory (the real `/opt/ml`, `$SAGEMAKER_BASE_DIR`, or a temp dir in tests
and local mode). Output: `JobPaths`, the raw hyperparameter map, the channel descriptions and
the resource config. Nothing here interprets hyperparameter *values*: typed decoding happens
in `config.py`, field by field.

Non-obvious: `resourceconfig.json` and `inputdataconfig.json` are optional (default: one host
`localhost`, channels found on disk), and local mode omits `S3DistributionType` and
`instance_groups`. `hosts` is sorted as strings by SageMaker (`algo-10` before `algo-2`), so
node ranks come from `ResourceConfig.ordered_hosts`, which sorts by the numeric suffix.
Reference: ../shared/docs/sagemaker_contract.md §1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tsa.errors import ChannelError, ConfigError

DEFAULT_BASE_DIR = Path("/opt/ml")
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"

# Channel name -> accepted folder names under input/data, canonical name first.
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "vali", "val"),
    "calibration": ("calibration", "cali"),
    "test": ("test",),
}
REQUIRED_CHANNELS = ("train",)

# SageMaker API limits on CreateTrainingJob.HyperParameters (botocore service model).
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_VALUE_CHARS = 2500

HyperparameterEncoding = Literal["str", "json", "v3"]


@dataclass(frozen=True)
class JobPaths:
    """Every path of the `/opt/ml` layout, derived from one root."""

    root: Path

    @classmethod
    def from_root(cls, root: str | os.PathLike[str] | None = None) -> JobPaths:
        """Paths under `root`, else `$SAGEMAKER_BASE_DIR`, else `/opt/ml`."""
        if root is None:
            root = os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR
        return cls(Path(root))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def inputdataconfig_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resourceconfig_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def success_file(self) -> Path:
        return self.output_dir / "success"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"


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
        return self.distribution == "ShardedByS3Key"


@dataclass(frozen=True)
class ResourceConfig:
    """The cluster as `resourceconfig.json` describes it (one `localhost` if absent)."""

    current_host: str = "localhost"
    hosts: tuple[str, ...] = ("localhost",)
    network_interface_name: str | None = None
    current_instance_type: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

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


def read_json_file(path: Path, *, required: bool) -> Any:
    """Parse a JSON config file; a missing optional file gives None."""
    if not path.exists():
        if required:
            raise ConfigError([f"file '{path}' is missing: the job needs it (SageMaker writes it)"])
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"file '{path}' is not valid JSON ({exc}): write a JSON object"]) from exc


def read_hyperparameters(paths: JobPaths) -> dict[str, Any]:
    """The raw hyperparameter map of `hyperparameters.json` (values usually strings)."""
    data = read_json_file(paths.hyperparameters_file, required=False)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"file '{paths.hyperparameters_file}' holds a {type(data).__name__}: expected a JSON object"]
        )
    return data


def read_resource_config(paths: JobPaths) -> ResourceConfig:
    """`resourceconfig.json`, or one host named `localhost` when it is absent."""
    data = read_json_file(paths.resourceconfig_file, required=False)
    if data is None:
        return ResourceConfig()
    file = paths.resourceconfig_file
    if not isinstance(data, dict):
        raise ConfigError([f"file '{file}' holds a {type(data).__name__}: expected a JSON object"])
    hosts = data.get("hosts")
    current = data.get("current_host")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ConfigError([f"file '{file}': 'hosts' = {hosts!r}: expected a non-empty list of host names"])
    if current not in hosts:
        raise ConfigError([f"file '{file}': 'current_host' = {current!r}: expected one of {hosts}"])
    return ResourceConfig(
        current_host=current,
        hosts=tuple(hosts),
        network_interface_name=data.get("network_interface_name"),
        current_instance_type=data.get("current_instance_type"),
        raw=data,
    )


def canonical_channel_name(folder: str) -> str | None:
    """Map a channel folder name (`vali`, `cali`, ...) to its canonical name."""
    for name, aliases in CHANNEL_ALIASES.items():
        if folder in aliases:
            return name
    return None


def read_channels(paths: JobPaths) -> dict[str, Channel]:
    """Channels present under `input/data`, keyed by canonical name.

    Raises `ChannelError` when `train` is missing, two folders alias the same channel, or a
    channel uses Pipe mode.
    """
    config = read_json_file(paths.inputdataconfig_file, required=False) or {}
    if not isinstance(config, dict):
        raise ConfigError(
            [f"file '{paths.inputdataconfig_file}' holds a {type(config).__name__}: expected a JSON object"]
        )
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
    for name in REQUIRED_CHANNELS:
        if name not in found:
            raise ChannelError(
                f"channel '{name}' is missing: no folder '{paths.data_dir / name}'; "
                f"a training job needs a '{name}' channel with the training data"
            )
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


def resolve_config_file(raw: Mapping[str, Any], paths: JobPaths) -> dict[str, Any]:
    """Merge the JSON file named by `config_file` (`<channel>/<path>` under input/data).

    Keys given directly in `hyperparameters.json` win over the file's.
    """
    merged = dict(raw)
    name = merged.pop("config_file", None)
    if name is None:
        return merged
    name = name.strip('"') if isinstance(name, str) else name
    if not isinstance(name, str) or not name:
        raise ConfigError([f"hyperparameter 'config_file' = {name!r}: expected a path '<channel>/<file>.json'"])
    data_dir = paths.data_dir.resolve()
    path = (paths.data_dir / name).resolve()
    if data_dir not in path.parents:
        raise ConfigError(
            [f"hyperparameter 'config_file' = {name!r}: must name a file inside {paths.data_dir} (a channel)"]
        )
    if not path.is_file():
        raise ConfigError(
            [f"hyperparameter 'config_file' = {name!r}: no such file {path}; give '<channel>/<file>.json'"]
        )
    content = read_json_file(path, required=True)
    if not isinstance(content, dict):
        raise ConfigError([f"config_file '{path}' holds a {type(content).__name__}: expected a JSON object"])
    if "config_file" in content:
        raise ConfigError([f"config_file '{path}' names another config_file: nesting is not supported"])
    return {**content, **merged}


def load_hyperparameters(paths: JobPaths) -> dict[str, Any]:
    """`hyperparameters.json` checked against SageMaker's limits, with `config_file` merged in."""
    raw = read_hyperparameters(paths)
    check_wire_limits(raw)
    return resolve_config_file(raw, paths)

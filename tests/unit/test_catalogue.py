"""The fault catalogue: every bad input and fault of the nine classes, one row each, through `tsa train`.

Run: .venv/bin/pytest tests/unit/test_catalogue.py   (part of `make test`)

A row says how the job folder is made wrong (`build`) or what goes wrong while the job runs
(`inject`: a real SIGTERM sent to the job when a function of a phase is first called, or an
OSError from a write under a folder), the exit code, text the failure file's first line must
contain, and what `/opt/ml/model` holds afterwards:
- KEPT: exactly the complete set it held before (every row starts from a previous job's set);
- NEW: a complete set written by this run (its artifact names, nothing of the previous set);
- STAGED: the complete set an earlier, killed attempt was publishing.
And for every row: no traceback in the failure file (whose length SageMaker caps at 1024 shown
characters), no `.partial`, `.previous` or `.publishing` in `model/`, and no payload ran.
Faults that need a real process tree or real permissions (a read-only or full volume, another
user, `docker stop`) are rows of the container tests (`tests/container`); serving's hostile clients
are `tests/unit/test_serving_faults.py`'s table, and a real SIGTERM in each phase of a real process,
timed, is `tests/unit/test_stops.py`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import write_job
from tests.inputs import DATA_HP, GOOD_HP
from tests.jobs import (
    QUICK,
    Arrays,
    artifact_names,
    job_with_train_arrays,
    make_job,
    run_job,
    snapshot,
    synthetic_arrays,
    write_channel,
)
from tsa.data.convert import read_npy_arrays, write_parquet_channel
from tsa.entrypoint import main_train
from tsa.training.stop import STOP

KEPT, NEW, STAGED = "kept", "new", "staged"
MATERIAL_ROWS = "train=64,validation=96,calibration=32"  # validation: three batches
WORKING_ENTRIES = (".partial", ".previous", ".publishing")


@dataclass(frozen=True)
class Material:
    """A finished tiny job: its model set is every row's previous set; its data and checkpoint, the rows' stuff."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "input/data"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints/last.ckpt"


Build = Callable[[Path, Material], Path]
Inject = Callable[[pytest.MonkeyPatch, Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    fault_class: int  # 1 signals, 2 unusable values, 3 sizes, 4 names as paths, 5 environment, 6 checkpoints,
    # 7 data, 8 multi-host, 9 minor (the classes of the reliability issue)
    build: Build
    exit: int
    first_line: str
    model: str = KEPT
    inject: Inject | None = None
    env: dict[str, str] = field(default_factory=dict)
    failure_in_log: bool = False  # the output folder is unusable: the cause is the log's `job failed:` line


# --- builders ------------------------------------------------------------------------------------

def config_job(hp: Any = None, *, channels: tuple[str, ...] = ("train", "validation"),
               inputdataconfig: Any = None, resourceconfig: dict[str, Any] | None = None,
               remove_hyperparameters: bool = False) -> Build:
    """A job that fails on its config files (empty channel folders: it never reaches the data)."""
    def build(tmp: Path, material: Material) -> Path:
        root = write_job(tmp / "opt_ml", GOOD_HP if hp is None else hp, channels=channels,
                         inputdataconfig=None if isinstance(inputdataconfig, str) else inputdataconfig,
                         resourceconfig=resourceconfig)
        if isinstance(inputdataconfig, str):
            (root / "input/config/inputdataconfig.json").write_text(inputdataconfig)
        if remove_hyperparameters:
            (root / "input/config/hyperparameters.json").unlink()
        return root
    return build


def hp(**changes: str) -> Build:
    return config_job({**GOOD_HP, **changes})


DUAL_DATA_HP = {**DATA_HP, "model_type": "dual"}


def data_job(mutate: Callable[[Arrays], None], fmt: str = "npy", hyperparameters: dict[str, str] = DATA_HP,
             channel: str = "train") -> Build:
    """A job whose `channel` holds `mutate`d arrays (good train and validation channels beside it)."""
    def build(tmp: Path, material: Material) -> Path:
        arrays = synthetic_arrays(hyperparameters)
        mutate(arrays)
        if channel == "train":
            return job_with_train_arrays(tmp / "opt_ml", arrays, fmt, hyperparameters)
        root = job_with_train_arrays(tmp / "opt_ml", synthetic_arrays(hyperparameters), fmt, hyperparameters)
        shutil.rmtree(root / "input/data" / channel, ignore_errors=True)
        write_channel(root / "input/data" / channel, arrays, fmt)
        return root
    return build


def setting(index: tuple, value: object, name: str) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return mutate


def replacing(name: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        arrays[name] = make(arrays[name])
    return mutate


def dropping(name: str) -> Callable[[Arrays], None]:
    return lambda arrays: arrays.pop(name)


def emptying(arrays: Arrays) -> None:
    for name in arrays:
        arrays[name] = arrays[name][:0]


def labelled(label: int) -> Callable[[Arrays], None]:
    """Every example of the channel gets `label`."""
    return replacing("Y", lambda a: np.full_like(a, label))


def all_padding(example: int, name: str = "X_seq_num") -> Callable[[Arrays], None]:
    """Example `example` has no real row: `not_padded` 0 everywhere (the ids and values too, as padding is)."""
    def mutate(arrays: Arrays) -> None:
        cat, num = name.replace("X_seq_num", "X_seq_cat"), name
        arrays[cat], arrays[num] = arrays[cat].copy(), arrays[num].copy()
        arrays[cat][example] = 0
        arrays[num][example] = 0.0
    return mutate


def as_strings(name: str) -> Callable[[Arrays], None]:
    """Array `name`'s numbers written as text (a Parquet string column)."""
    return replacing(name, lambda a: a.astype(str))


def with_a_null_label(arrays: Arrays) -> None:
    """The last label missing (a Parquet null)."""
    arrays["Y"] = np.array([*arrays["Y"][:-1].tolist(), None], dtype=object)


def float16_times_overflow(arrays: Arrays) -> None:
    """X_seq_num stored as float16, one time_to_last above its largest value (65504): an Inf in the file."""
    values = arrays["X_seq_num"].copy()
    values[..., -2] = np.minimum(values[..., -2], 1000.0)
    values[4, 2, -2] = 1e6
    arrays["X_seq_num"] = values.astype(np.float16)


def after(build: Build, change: Callable[[Path], None]) -> Build:
    """`build`, then `change(root)` (a file of the built job broken on disk)."""
    def built(tmp: Path, material: Material) -> Path:
        root = build(tmp, material)
        change(root)
        return root
    return built


def train_file(name: str) -> Callable[[Path], Path]:
    return lambda root: root / "input/data/train" / name


def first_parquet(channel: str = "train") -> Callable[[Path], Path]:
    return lambda root: next((root / "input/data" / channel).glob("*.parquet"))


def emptied_folder(channel: str) -> Callable[[Path], None]:
    """The channel's folder is there, without a file (an S3 prefix that held nothing)."""
    def change(root: Path) -> None:
        for path in (root / "input/data" / channel).iterdir():
            path.unlink()
    return change


def truncate(path: Callable[[Path], Path], keep: int) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        target = path(root)
        target.write_bytes(target.read_bytes()[:keep])
    return change


def trained_job(hp_changes: dict[str, str] | None = None, *, checkpoint: Callable[[Path, Material], None] | None = None,
                data: Callable[[Path], None] | None = None, resourceconfig: dict[str, Any] | None = None) -> Build:
    """A job of the tiny model on the material's data (copied), with an optional checkpoint put in place."""
    def build(tmp: Path, material: Material) -> Path:
        root = write_job(tmp / "opt_ml", {**QUICK, **(hp_changes or {})}, channels=(), resourceconfig=resourceconfig)
        shutil.copytree(material.data, root / "input/data")
        if data is not None:
            data(root)
        if checkpoint is not None:
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            checkpoint(root / "checkpoints/last.ckpt", material)
        return root
    return build


# --- checkpoint faults ---------------------------------------------------------------------------

class Payload:
    """A pickle that runs a shell command when it is unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def payload_marker(root: Path) -> Path:
    return root / "PAYLOAD_RAN"


def copied(target: Path, material: Material) -> None:
    shutil.copyfile(material.checkpoint, target)


def truncated(target: Path, material: Material) -> None:
    target.write_bytes(material.checkpoint.read_bytes()[:1000])


def random_bytes(target: Path, material: Material) -> None:
    target.write_bytes(np.random.default_rng(1).bytes(4096))


def pickle_payload(target: Path, material: Material) -> None:
    target.write_bytes(pickle.dumps({"state_dict": Payload(payload_marker(target.parents[1]))}))


def foreign_file(target: Path, material: Material) -> None:
    import torch

    torch.save({"epoch": 3, "state_dict": {}}, target)


def with_corrupt_best_weights(target: Path, material: Material) -> None:
    copied(target, material)
    (target.parent / "best-model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")


def fewer_training_rows(root: Path) -> None:
    for path in (root / "input/data/train").iterdir():
        np.save(path, np.load(path)[:48])


def extreme_engineered_values(root: Path) -> None:
    path = root / "input/data/train/train_X_num_v0.npy"
    np.save(path, np.full_like(np.load(path), 1e30))


def big_endian(root: Path) -> None:
    for path in (root / "input/data/train").iterdir():
        values = np.load(path)
        np.save(path, values.astype(values.dtype.newbyteorder(">")))


def retyped(dtypes: dict[str, Any], fmt: str = "npy", change: Callable[[Arrays], None] | None = None
            ) -> Callable[[Path], None]:
    """The train channel rewritten with arrays of other dtypes (values kept; `change` first), in `fmt`."""
    def rewrite(root: Path) -> None:
        folder = root / "input/data/train"
        arrays = {name: np.array(values) for name, values in read_npy_arrays(folder).items()}
        if change is not None:
            change(arrays)
        shutil.rmtree(folder)
        write_channel(folder, {name: values.astype(dtypes.get(name, values.dtype)) for name, values in arrays.items()},
                      fmt)
    return rewrite


def times_within_float16(arrays: Arrays) -> None:
    """time_to_last clipped to 60000 s, which float16 holds (65504 at most)."""
    arrays["X_seq_num"][..., -2] = np.minimum(arrays["X_seq_num"][..., -2], 6e4)


def object_array(root: Path) -> None:
    np.save(root / "input/data/train/train_Y_v0.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


# --- faults while the job runs -------------------------------------------------------------------

def sigterm_when(owner: object, name: str) -> Inject:
    """A real SIGTERM to this process when `owner.name` is first called (the job's own handler takes it)."""
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        original = getattr(owner, name)
        sent = []

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
    return inject


def sigterm_in_log_record(text: str) -> Inject:
    """SIGTERM while `logging` emits the record containing `text` (where an exception would be swallowed)."""
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        original = logging.StreamHandler.emit

        def emit(self: logging.StreamHandler, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                os.kill(os.getpid(), signal.SIGTERM)
            original(self, record)

        monkeypatch.setattr(logging.StreamHandler, "emit", emit)
    return inject


def writes_fail(under: str, code: int = errno.ENOSPC) -> Inject:
    """Every write of a file under `root/under` raises the OSError a full (or read-only) volume raises.

    The start's write probe passes: the volume fills while the job runs.
    """
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        folder = str(root / under)

        def failing(original: Callable[..., Any]) -> Callable[..., Any]:
            def write(self: Path, *args: Any, **kwargs: Any) -> Any:
                mode = args[0] if args and isinstance(args[0], str) else kwargs.get("mode", "w")
                writing = original.__name__ != "open" or any(flag in mode for flag in "wax+")
                if writing and str(self).startswith(folder) and not self.name.startswith(".tsa-write-check"):
                    raise OSError(code, os.strerror(code), str(self))
                return original(self, *args, **kwargs)
            return write

        for method in ("write_bytes", "write_text", "open"):
            monkeypatch.setattr(Path, method, failing(getattr(Path, method)))
    return inject


def read_only(under: str) -> Inject:
    """`root/under` is on a read-only volume from the start: every write there, the start's probe included,
    raises EROFS (a real read-only mount needs the container tests)."""
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        folder = str(root / under)

        def failing(original: Callable[..., Any]) -> Callable[..., Any]:
            def write(self: Path, *args: Any, **kwargs: Any) -> Any:
                mode = args[0] if args and isinstance(args[0], str) else kwargs.get("mode", "w")
                writing = {"open": any(flag in mode for flag in "wax+"), "mkdir": not self.is_dir()}.get(
                    original.__name__, True)
                if writing and (str(self) == folder or str(self).startswith(folder + os.sep)):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
                return original(self, *args, **kwargs)
            return write

        for method in ("write_bytes", "write_text", "open", "mkdir", "touch"):
            monkeypatch.setattr(Path, method, failing(getattr(Path, method)))
    return inject


def checkpoint_write_fails(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Lightning's checkpoint writer meets a full volume (it writes through fsspec, not pathlib)."""
    import lightning as L

    def save_checkpoint(self: L.Trainer, filepath: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", save_checkpoint)


def little_free_space_under(under: str) -> Inject:
    """The volume of `root/under` has 1 MiB free."""
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        original = shutil.disk_usage

        def usage(path: Any) -> Any:
            real = original(path)
            return real._replace(free=2**20) if str(path).startswith(str(root / under)) else real

        monkeypatch.setattr(shutil, "disk_usage", usage)
    return inject


little_free_space = little_free_space_under("model")


def unwritable_tmpdir(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """TMPDIR names a folder that does not exist (and cannot be made: its parent is a file)."""
    (root / "not-a-folder").write_text("x")
    monkeypatch.setenv("TMPDIR", str(root / "not-a-folder/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # computed again from TMPDIR, as in a fresh process


def no_home(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.delenv("HOME", raising=False)


def unresolvable_hosts(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Name resolution as for a host that does not exist (no query leaves the sandbox)."""
    def getaddrinfo(host: str, *args: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# --- a publish interrupted by SIGKILL -------------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: nothing of the job runs after it."""


def staged_set(previous: dict[str, str]) -> dict[str, bytes]:
    """The complete set an earlier attempt was publishing (the previous set's names, other contents)."""
    return {name: f"staged {name} {digest}".encode() for name, digest in previous.items()}


def killed_while_publishing(renames_before_kill: Callable[[int], int]) -> Callable[[Build], Build]:
    """The folder a job leaves when it is killed after some of the publish's renames."""
    def around(build: Build) -> Build:
        def built(tmp: Path, material: Material) -> Path:
            from tsa import artifacts

            root = build(tmp, material)
            model = root / "model"
            staged = staged_set(snapshot(model))
            for name, content in staged.items():
                (model / ".partial" / name).parent.mkdir(parents=True, exist_ok=True)
                (model / ".partial" / name).write_bytes(content)
            limit = renames_before_kill(len(list(model.iterdir())))
            calls = []
            real_replace = os.replace

            def replace(src: Any, dst: Any) -> None:
                if len(calls) == limit:
                    raise Killed
                calls.append(src)
                real_replace(src, dst)

            artifacts.os.replace = replace  # type: ignore[attr-defined]
            try:
                artifacts.ModelFolder(model).publish()
            except Killed:
                pass
            finally:
                artifacts.os.replace = real_replace  # type: ignore[attr-defined]
            return root
        return built
    return around


killed_moving_the_old_set_out = killed_while_publishing(lambda entries: entries // 2)
killed_moving_the_new_set_in = killed_while_publishing(lambda entries: entries + 2)


# --- the catalogue ---------------------------------------------------------------------------------

def attribute(name: str) -> tuple[Any, str]:
    """An attribute by dotted path, resolved when the row runs (`tsa.module.Class.method`)."""
    import importlib

    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1]
    raise ImportError(name)


def sigterm_at(target: str) -> Inject:
    def inject(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        sigterm_when(*attribute(target))(monkeypatch, root)
    return inject


STOPPED = 143
BEFORE_TRAINING = "training stopped by SIGTERM before training"
TWO_HOSTS = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
ONE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"]}
F16 = "float16 holds magnitudes up to 65504: store float32"

CATALOGUE: list[Case] = [
    # 1. Signals: the handler sets a flag; each phase stops at its next safe point, truthfully.
    Case("sigterm_reading_config", 1, trained_job(), STOPPED, f"{BEFORE_TRAINING} (while reading the config)",
         inject=sigterm_at("tsa.entrypoint.load_hyperparameters")),
    Case("sigterm_validating_data", 1, trained_job(), STOPPED, f"{BEFORE_TRAINING} (while validating the data)",
         inject=sigterm_at("tsa.entrypoint.validate_channel")),
    Case("sigterm_inside_logging", 1, trained_job(), STOPPED, BEFORE_TRAINING,
         inject=sigterm_in_log_record("run plan:")),
    Case("sigterm_lightning_setup", 1, trained_job(), STOPPED,
         "training stopped by SIGTERM during the set-up of training; the model folder keeps what it held; nothing "
         "was checkpointed yet", inject=sigterm_at("tsa.training.system.TsaSystem.setup")),
    Case("sigterm_training_step", 1, trained_job(), STOPPED, "at epoch 0, step 1; checkpoint saved to",
         inject=sigterm_at("tsa.training.system.TsaSystem.training_step")),
    Case("sigterm_validation_pass", 1, trained_job(), STOPPED,
         "training stopped by SIGTERM (stop, timeout or spot interruption) during the validation of epoch 0; "
         "checkpoint saved to {root}/checkpoints/last.ckpt with the epoch trained; the model folder keeps what it held",
         inject=sigterm_at("tsa.training.evaluation.EvaluationPass.add")),
    Case("sigterm_final_scoring", 1, trained_job(), STOPPED,
         "during the final scoring of 'validation'; the model folder keeps what it held; the job resumes from "
         "checkpoint", inject=sigterm_at("tsa.training.system.TsaSystem.score")),
    Case("sigterm_writing_artifacts", 1, trained_job(), STOPPED,
         "training stopped by SIGTERM while writing the artifacts; the model folder keeps what it held",
         inject=sigterm_at("tsa.artifacts.write_serving")),
    Case("sigterm_while_publishing", 1, trained_job(), STOPPED, "the move was completed: the model folder holds the "
         "new complete set", model=NEW, inject=sigterm_at("tsa.artifacts.ModelFolder._complete_publish")),
    Case("sigkill_moving_old_set_out_then_rerun", 1, killed_moving_the_old_set_out(hp(dropout="2")), 2,
         "'dropout' = '2'"),
    Case("sigkill_moving_new_set_in_then_rerun", 1, killed_moving_the_new_set_in(hp(dropout="2")), 2,
         "'dropout' = '2'", model=STAGED),
    # 2. Values that parse but cannot be used.
    Case("infinite_maxlr", 2, hp(scheduler_maxlr="1e309"), 2, "'scheduler_maxlr' = '1e309': expected"),
    Case("infinite_weight_decay", 2, hp(weight_decay="inf"), 2, "'weight_decay' = 'inf': expected a finite"),
    Case("infinite_lr", 2, hp(lr="inf"), 2, "'lr' = 'inf': expected a finite number > 0 and <= 1"),
    Case("nan_lr", 2, hp(lr="nan"), 2, "'lr' = 'nan': expected a finite number > 0 and <= 1"),
    Case("nan_dropout", 2, hp(dropout="NaN"), 2, "'dropout' = 'NaN': expected a finite"),
    Case("huge_lr", 2, hp(lr="50"), 2, "'lr' = '50': expected a finite number > 0 and <= 1"),
    Case("negative_weight_decay", 2, hp(weight_decay="-0.1"), 2, "'weight_decay' = '-0.1'"),
    Case("dropout_above_one", 2, hp(dropout="1.5"), 2, "'dropout' = '1.5'"),
    Case("zero_batch", 2, hp(batch_size="0"), 2, "'batch_size' = '0'"),
    Case("huge_gamma", 2, hp(loss_gamma="1e300"), 2, "'loss_gamma' = '1e300'"),
    Case("time_overflows", 2, data_job(setting((4, 1, -2), 1e30, "X_seq_num")), 2, "example 4 exceeds 8.8e+07 s"),
    Case("diverging_data", 2, trained_job(data=extreme_engineered_values), 2,
         "training diverged in epoch 0: the mean training loss is nan"),
    # 3. Sizes without bounds: estimated from the config and refused before anything is built.
    Case("endless_layers", 3, hp(n_layers_order="100000000"), 2, "the model does not fit"),
    Case("layers_named_with_the_largest_that_fits", 3, hp(n_layers_order="100000000"), 2,
         "; lower one of them: at most n_layers_order="),
    Case("layers_in_exponent_form", 3, hp(n_layers_feature="1e20"), 2, "'n_layers_feature' = '1e20'"),
    Case("huge_table_width", 3, hp(dim_embedding_table="1000000"), 2, "the model does not fit"),
    Case("huge_vocabulary", 3, hp(n_embedding="1000000000000"), 2, "the model does not fit"),
    Case("huge_batch", 3, hp(batch_size="100000000"), 2, "plus the activations of a batch of 100000000"),
    Case("batch_named_with_the_largest_that_fits", 3, hp(batch_size="100000000"), 2,
         "; lower one of them: at most batch_size="),
    Case("huge_feedforward", 3, hp(dim_attn_feedforward="100000000"), 2, "the model does not fit"),
    Case("too_many_processes", 3, hp(cpu_processes="100000"), 2,
         "'cpu_processes' = '100000': expected an integer >= 1 and <= 256"),
    # 4. Names used as paths.
    Case("test_name_escapes", 4, hp(test_name="../../x"), 2, "'test_name' = '../../x': expected a file name"),
    Case("test_name_subfolder", 4, hp(test_name="a/b"), 2, "'test_name' = 'a/b': expected a file name"),
    Case("test_name_hidden", 4, hp(test_name=".x"), 2, "'test_name' = '.x': expected a file name"),
    Case("test_name_absolute", 4, hp(test_name="/etc/x"), 2, "'test_name' = '/etc/x': expected a file name"),
    Case("test_name_nul", 4, hp(test_name="a\x00b"), 2, "'test_name' = 'a\\x00b': expected a file name"),
    Case("data_version_path", 4, hp(data_version="v0/../x"), 2, "'data_version' = 'v0/../x'"),
    Case("config_file_escapes", 4, hp(config_file="../../config/x.json"), 2, "must name a file inside"),
    # 5. The environment, checked before training; a write error names the folder and the cause.
    Case("checkpoint_dir_under_a_file", 5, hp(checkpoint_dir="/dev/null/x"), 2,
         "checkpoint folder (hyperparameter 'checkpoint_dir') '/dev/null/x' is not writable (Not a directory)"),
    Case("checkpoints_is_a_file", 5, after(trained_job(), lambda r: (r / "checkpoints").write_text("x")), 2,
         "checkpoints' is not writable"),
    Case("output_data_is_a_file", 5, after(trained_job(), lambda r: (r / "output").mkdir() or
                                           (r / "output/data").write_text("x")), 2, "output/data' is not writable"),
    Case("model_volume_too_small", 5, trained_job(), 2, "MiB free, but the job writes about",
         inject=little_free_space),
    Case("model_volume_fills_while_exporting", 5, trained_job(), 2,
         "writing the artifacts failed at '{root}/model/.partial/model.safetensors' (No space left on device)",
         inject=writes_fail("model/.partial")),
    Case("model_volume_read_only_while_exporting", 5, trained_job(), 2, "(Read-only file system)",
         inject=writes_fail("model/.partial", errno.EROFS)),
    Case("checkpoint_volume_fills", 5, trained_job(), 2,
         "writing the checkpoint failed at '{root}/checkpoints/last.ckpt.tmp' (No space left on device)",
         inject=checkpoint_write_fails),
    Case("best_weights_volume_fills", 5, trained_job(), 2,
         "writing the best model's weights failed at '{root}/checkpoints/best-model.",
         inject=writes_fail("checkpoints/best-model")),
    Case("output_volume_fills", 5, trained_job(), 2,
         "writing the artifacts failed at '{root}/output/data/predictions_validation.csv' (No space left",
         inject=writes_fail("output/data")),
    # A folder read-only or full from the start: refused before training, naming the folder and the cause.
    Case("output_read_only_at_start", 5, trained_job(), 2,  # the failure file cannot be written either
         "output folder '{root}/output/data' is not writable (Read-only file system)", inject=read_only("output"),
         failure_in_log=True),
    Case("output_data_read_only_at_start", 5, trained_job(), 2,
         "output folder '{root}/output/data' is not writable (Read-only file system)",
         inject=read_only("output/data")),
    Case("model_read_only_at_start", 5, trained_job(), 2,
         "model folder '{root}/model' is not writable (Read-only file system)", inject=read_only("model")),
    Case("checkpoints_read_only_at_start", 5, trained_job(), 2,
         "checkpoints' is not writable (Read-only file system)", inject=read_only("checkpoints")),
    Case("output_volume_full_at_start", 5, trained_job(), 2,
         "output folder '{root}/output/data' has 1.0 MiB free, but the job writes about",
         inject=little_free_space_under("output/data")),
    Case("checkpoint_volume_too_small", 5, trained_job(), 2, "checkpoints' has 1.0 MiB free, but the job writes about",
         inject=little_free_space_under("checkpoints")),
    # Exit 0 where nothing is wrong for the job: a missing model folder is made (SageMaker always makes
    # one; a local job folder may lack it), a TMPDIR that cannot be used is passed over by Python's
    # tempfile (it tries /tmp next), and no HOME is needed.
    Case("no_model_folder", 5, after(trained_job(), lambda r: shutil.rmtree(r / "model")), 0, "", model=NEW),
    Case("tmpdir_unwritable", 5, trained_job(), 0, "", model=NEW, inject=unwritable_tmpdir),
    Case("home_unset", 5, trained_job(), 0, "", model=NEW, inject=no_home),
    # SM_* variables that contradict the files SageMaker writes: the files are the source of truth (the
    # job reads resourceconfig.json and its own folders, never these variables, and overwrites them with a
    # warning, test_contradicting_sm_variables_are_overwritten), so a single-host job trains alone without
    # waiting, and a two-host job waits (bounded) for the host of the file.
    Case("sm_hosts_contradict_resourceconfig", 5, trained_job(resourceconfig=ONE_HOST), 0, "", model=NEW,
         env={"SM_HOSTS": '["algo-1", "algo-2"]', "SM_NUM_GPUS": "8"}),
    Case("sm_current_host_contradicts_resourceconfig", 5, trained_job(resourceconfig=ONE_HOST), 0, "", model=NEW,
         env={"SM_CURRENT_HOST": "algo-7"}),
    Case("sm_model_dir_elsewhere", 5, trained_job(), 0, "", model=NEW,
         env={"SM_MODEL_DIR": "/nonexistent/model", "SM_OUTPUT_DATA_DIR": "/nonexistent/output"}),
    Case("sm_hosts_one_but_resourceconfig_two", 5, trained_job({"host_resolution_timeout_s": "1"},
                                                              resourceconfig=TWO_HOSTS), 2,
         "host 'algo-1' of resourceconfig.json did not resolve within 1 s", inject=unresolvable_hosts,
         env={"SM_HOSTS": '["algo-2"]', "SM_CURRENT_HOST": "algo-2"}),
    # 6. Checkpoints: read with weights_only=True, refused with the file named, or ignored on request.
    Case("checkpoint_truncated", 6, trained_job(checkpoint=truncated), 2,
         "checkpoint '{root}/checkpoints/last.ckpt' cannot be read safely"),
    Case("checkpoint_random_bytes", 6, trained_job(checkpoint=random_bytes), 2, "cannot be read safely"),
    Case("checkpoint_pickle_with_code", 6, trained_job(checkpoint=pickle_payload), 2, "cannot be read safely",
         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("checkpoint_not_written_by_tsa", 6, trained_job(checkpoint=foreign_file), 2,
         "was not written by tsa-training"),
    Case("checkpoint_other_model_config", 6, trained_job({"n_layers_order": "2"}, checkpoint=copied), 2,
         "model.n_layers_order (1 in the checkpoint, 2 now)"),
    Case("checkpoint_other_training_config", 6, trained_job({"scheduler_maxlr": "0.01"}, checkpoint=copied), 2,
         "train.scheduler_maxlr"),
    Case("resume_under_another_test_name", 6, trained_job({"test_name": "other"}, checkpoint=copied), 0, "",
         model=NEW),  # test_name only names output files: the rerun resumes and writes the set under the new name
    Case("checkpoint_other_data", 6, trained_job(checkpoint=copied, data=fewer_training_rows), 2, "channel sizes"),
    Case("best_weights_corrupt", 6, trained_job(checkpoint=with_corrupt_best_weights), 2,
         "best weights '{root}/checkpoints/best-model.safetensors' cannot be read"),
    Case("ignore_foreign_checkpoint", 6, trained_job({"n_layers_order": "2", "ignore_checkpoint": "true"},
                                                     checkpoint=copied), 0, "", model=NEW),
    Case("rerun_over_another_jobs_model", 6, trained_job({"test_name": "other"}), 0, "", model=NEW),
    # 7. Odd but valid data is read; invalid data is refused naming channel, file and array.
    Case("big_endian_arrays", 7, trained_job(data=big_endian), 0, "", model=NEW),
    Case("object_dtype_array", 7, trained_job(data=object_array), 2,
         "channel 'train' file 'train_Y_v0.npy' array 'Y': not a readable .npy file"),
    Case("missing_file", 7, data_job(dropping("X_seq_num")), 2, "file 'train_X_seq_num_v0.npy' (array 'X_seq_num'"),
    Case("missing_ccid_file", 7, data_job(dropping("ccid_X_seq_cat"), hyperparameters=DUAL_DATA_HP), 2,
         "file 'train_ccid_X_seq_cat_v0.npy'"),
    Case("missing_parquet_column", 7, data_job(dropping("X_num"), "parquet"), 2, "column 'X_num' is missing"),
    Case("mismatched_n", 7, data_job(replacing("X_num", lambda a: a[:-1])), 2, "11 examples, but"),
    Case("float_ids", 7, data_job(replacing("X_seq_cat", lambda a: a.astype(np.float32))), 2,
         "dtype float32, expected an int"),
    Case("float_labels", 7, data_job(replacing("Y", lambda a: a.astype(np.float64)), "parquet"), 2,
         "array 'Y': dtype float64"),
    Case("wrong_seq_len", 7, data_job(replacing("X_seq_cat", lambda a: a[:, 1:])), 2, "per-example shape (4, 4)"),
    Case("wrong_num_width", 7, data_job(replacing("X_seq_num", lambda a: a[..., 1:]), "parquet"), 2,
         "per-example shape (5, 4)"),
    Case("wrong_engineered_width", 7, data_job(replacing("X_num", lambda a: a[:, :1])), 2,
         "'X_num': per-example shape (1,)"),
    # Non-finite values, in each float array and column kind: the column and the value named.
    Case("nan_feature", 7, data_job(setting((3, 4, 0), np.nan, "X_seq_num")), 2,
         "array 'X_seq_num' column 0: example 3 holds NaN: allowed are finite numbers"),
    Case("nan_feature_parquet", 7, data_job(setting((3, 4, 1), np.nan, "X_seq_num"), "parquet"), 2,
         "file 'part-00000.parquet' array 'X_seq_num' column 1: example 3 holds NaN"),
    Case("posinf_feature", 7, data_job(setting((2, 0, 2), np.inf, "X_seq_num")), 2,
         "array 'X_seq_num' column 2: example 2 holds +Inf"),
    Case("neginf_feature_parquet", 7, data_job(setting((5, 3, 0), -np.inf, "X_seq_num"), "parquet"), 2,
         "array 'X_seq_num' column 0: example 5 holds -Inf"),
    Case("nan_time", 7, data_job(setting((4, 1, -2), np.nan, "X_seq_num")), 2,
         "array 'X_seq_num' column time_to_last (second to last): example 4 holds NaN"),
    Case("posinf_time_parquet", 7, data_job(setting((6, 2, -2), np.inf, "X_seq_num"), "parquet"), 2,
         "column time_to_last (second to last): example 6 holds +Inf: allowed are finite numbers"),
    Case("neginf_time", 7, data_job(setting((1, 0, -2), -np.inf, "X_seq_num")), 2,  # named, not "is negative"
         "column time_to_last (second to last): example 1 holds -Inf"),
    Case("nan_not_padded", 7, data_job(setting((7, 0, -1), np.nan, "X_seq_num")), 2,
         "column not_padded (last): example 7 holds NaN"),
    Case("float16_time_overflows", 7, data_job(float16_times_overflow), 2,
         f"column time_to_last (second to last): example 4 holds +Inf: allowed are finite numbers ({F16})"),
    Case("nan_engineered", 7, data_job(setting((0, 0), np.nan, "X_num")), 2,
         "array 'X_num' column 0: example 0 holds NaN"),
    Case("inf_engineered", 7, data_job(setting((7, 1), np.inf, "X_num"), "parquet"), 2,
         "array 'X_num' column 1: example 7 holds +Inf"),
    Case("neginf_engineered", 7, data_job(setting((11, 1), -np.inf, "X_num")), 2,
         "array 'X_num' column 1: example 11 holds -Inf"),
    Case("nan_engineered_parquet", 7, data_job(setting((3, 0), np.nan, "X_num"), "parquet"), 2,
         "file 'part-00000.parquet' array 'X_num' column 0: example 3 holds NaN"),
    Case("nan_cid_sequence", 7, data_job(setting((2, 1, 0), np.nan, "cid_X_seq_num"),
                                         hyperparameters=DUAL_DATA_HP), 2,
         "file 'train_cid_X_seq_num_v0.npy' array 'cid_X_seq_num' column 0: example 2 holds NaN"),
    Case("inf_ccid_time_parquet", 7, data_job(setting((5, 0, -2), np.inf, "ccid_X_seq_num"), "parquet",
                                              DUAL_DATA_HP), 2,
         "array 'ccid_X_seq_num' column time_to_last (second to last): example 5 holds +Inf"),
    Case("neginf_ccid_feature", 7, data_job(setting((9, 4, 1), -np.inf, "ccid_X_seq_num"),
                                            hyperparameters=DUAL_DATA_HP), 2,
         "file 'train_ccid_X_seq_num_v0.npy' array 'ccid_X_seq_num' column 1: example 9 holds -Inf"),
    Case("nan_in_validation", 7, data_job(setting((6, 3, 2), np.nan, "X_seq_num"), channel="validation"), 2,
         "channel 'validation' file 'validation_X_seq_num_v0.npy' array 'X_seq_num' column 2: example 6 holds NaN"),
    Case("id_too_large", 7, data_job(setting((5, 4, 2), 41, "X_seq_cat")), 2,
         "example 5 has categorical id 41: allowed 0..40"),
    Case("negative_id", 7, data_job(setting((2, 4, 0), -1, "X_seq_cat"), "parquet"), 2,
         "example 2 has categorical id -1"),
    Case("id_too_large_parquet", 7, data_job(setting((3, 0, 1), 100, "X_seq_cat"), "parquet"), 2,
         "file 'part-00000.parquet' array 'X_seq_cat': example 3 has categorical id 100: allowed 0..40"),
    Case("negative_id_npy", 7, data_job(setting((10, 2, 3), -7, "X_seq_cat")), 2,
         "file 'train_X_seq_cat_v0.npy' array 'X_seq_cat': example 10 has categorical id -7: allowed 0..40"),
    Case("id_too_large_cid", 7, data_job(setting((4, 4, 0), 41, "cid_X_seq_cat"), hyperparameters=DUAL_DATA_HP), 2,
         "array 'cid_X_seq_cat': example 4 has categorical id 41: allowed 0..40"),
    Case("negative_id_ccid_parquet", 7, data_job(setting((1, 3, 2), -1, "ccid_X_seq_cat"), "parquet",
                                                 DUAL_DATA_HP), 2,
         "array 'ccid_X_seq_cat': example 1 has categorical id -1: allowed 0..40"),
    Case("id_too_large_in_uint8", 7, data_job(lambda a: (replacing("X_seq_cat", lambda v: v.astype(np.uint8))(a),
                                                         setting((0, 4, 0), 255, "X_seq_cat")(a))), 2,
         "array 'X_seq_cat': example 0 has categorical id 255: allowed 0..40"),
    Case("id_too_large_in_calibration", 7, data_job(setting((8, 1, 1), 99, "X_seq_cat"), "parquet",
                                                    channel="calibration"), 2,
         "channel 'calibration' file 'part-00000.parquet' array 'X_seq_cat': example 8 has categorical id 99"),
    Case("not_padded_not_binary", 7, data_job(setting((6, 2, -1), 0.5, "X_seq_num")), 2,
         "column not_padded (last): example 6"),
    Case("current_row_padded", 7, data_job(setting((9, -1, -1), 0.0, "X_seq_num")), 2,
         "example 9 has a padded last row"),
    Case("all_padding", 7, data_job(all_padding(8)), 2,
         "array 'X_seq_num' column not_padded (last): example 8 has a padded last row"),
    Case("all_padding_parquet", 7, data_job(all_padding(2), "parquet"), 2,
         "column not_padded (last): example 2 has a padded last row"),
    Case("all_padding_ccid", 7, data_job(all_padding(3, "ccid_X_seq_num"), hyperparameters=DUAL_DATA_HP), 2,
         "array 'ccid_X_seq_num' column not_padded (last): example 3 has a padded last row"),
    Case("negative_time", 7, data_job(setting((4, 1, -2), -5.0, "X_seq_num")), 2,
         "time_to_last (second to last): example 4"),
    Case("label_out_of_range", 7, data_job(setting((8,), 2, "Y")), 2, "example 8 has label 2: allowed are 0..1"),
    Case("negative_label", 7, data_job(setting((0,), -1, "Y")), 2,
         "array 'Y': example 0 has label -1: allowed are 0..1"),
    Case("label_out_of_range_parquet", 7, data_job(setting((11,), 7, "Y"), "parquet"), 2,
         "file 'part-00000.parquet' array 'Y': example 11 has label 7: allowed are 0..1"),
    Case("negative_label_parquet", 7, data_job(setting((5,), -3, "Y"), "parquet"), 2,
         "example 5 has label -3: allowed are 0..1"),
    Case("label_out_of_range_as_column", 7,  # labels stored (N, 1), read as (N,)
         data_job(replacing("Y", lambda a: np.where(np.arange(len(a)) == 6, 3, a).reshape(-1, 1))), 2,
         "array 'Y': example 6 has label 3: allowed are 0..1"),
    # A scored channel with one label: its AUC is undefined (the job chose no best model and reported
    # AUC 0.0 with exit 0; the legacy's scikit-learn raised after training): refused before training.
    Case("validation_one_class", 7, data_job(labelled(0), channel="validation"), 2,
         "channel 'validation' file 'validation_Y_v0.npy' array 'Y': every example has label 0 (12 examples): its "
         "AUC, by which the best model is chosen, needs examples of each label 0..1; add examples of label 1"),
    Case("validation_only_positives_parquet", 7, data_job(labelled(1), "parquet", channel="validation"), 2,
         "channel 'validation' file 'part-00000.parquet' array 'Y': every example has label 1 (12 examples)"),
    Case("calibration_one_class", 7, data_job(labelled(0), channel="calibration"), 2,
         "channel 'calibration' file 'calibration_Y_v0.npy' array 'Y': every example has label 0 (12 examples): "
         "its AUC, of the final metrics, needs examples of each label 0..1"),
    Case("test_one_class_parquet", 7, data_job(labelled(1), "parquet", channel="test"), 2,
         "channel 'test' file 'part-00000.parquet' array 'Y': every example has label 1"),
    Case("empty_channel", 7, data_job(emptying), 2, "is empty: 0 examples"),
    Case("zero_d_labels", 7, data_job(replacing("Y", lambda a: np.array(1))), 2,
         "array 'Y': holds a single value (shape ())"),
    # dtypes: ids and labels of any integer width, features float16/32/64, read exactly (exit 0: a new set);
    # anything else is refused naming the dtype and what is allowed.
    Case("float16_engineered", 7, trained_job(data=retyped({"X_num": np.float16})), 0, "", model=NEW),
    Case("float16_sequence", 7, trained_job(data=retyped({"X_seq_num": np.float16}, change=times_within_float16)),
         0, "", model=NEW),
    Case("float16_parquet", 7, trained_job(data=retyped({"X_seq_num": np.float16, "X_num": np.float16}, "parquet",
                                                        times_within_float16)), 0, "", model=NEW),
    Case("uint8_ids_and_labels", 7, trained_job(data=retyped({"X_seq_cat": np.uint8, "Y": np.uint8})), 0, "",
         model=NEW),
    Case("uint8_ids_and_labels_parquet", 7, trained_job(data=retyped({"X_seq_cat": np.uint8, "Y": np.uint8},
                                                                     "parquet")), 0, "", model=NEW),
    Case("uint8_sequence_numerics", 7, data_job(replacing("X_seq_num", lambda a: a.astype(np.uint8))), 2,
         "array 'X_seq_num': dtype uint8, expected a float dtype (float16, float32 or float64)"),
    Case("uint8_engineered_parquet", 7, data_job(replacing("X_num", lambda a: a.astype(np.uint8)), "parquet"), 2,
         "array 'X_num': dtype uint8, expected a float dtype"),
    Case("float128_engineered", 7, data_job(replacing("X_num", lambda a: a.astype(np.longdouble))), 2,
         "array 'X_num': dtype float128, expected a float dtype (float16, float32 or float64)"),
    Case("string_ids_parquet", 7, data_job(as_strings("X_seq_cat"), "parquet"), 2,
         "array 'X_seq_cat': dtype string (Arrow), expected an integer dtype"),
    Case("string_features_parquet", 7, data_job(as_strings("X_seq_num"), "parquet"), 2,
         "array 'X_seq_num': dtype string (Arrow), expected a float dtype"),
    Case("string_engineered_parquet", 7, data_job(as_strings("X_num"), "parquet"), 2,
         "array 'X_num': dtype string (Arrow), expected a float dtype"),
    Case("string_labels_parquet", 7, data_job(as_strings("Y"), "parquet"), 2,
         "array 'Y': dtype string (Arrow), expected an integer dtype"),
    Case("string_labels_npy", 7, data_job(as_strings("Y")), 2,
         "file 'train_Y_v0.npy' array 'Y': dtype <U21, expected an integer dtype"),
    Case("null_label_parquet", 7, data_job(with_a_null_label, "parquet"), 2,
         "channel 'train' file 'part-00000.parquet' column 'Y': holds nulls"),
    # Files and folders without data.
    Case("empty_train_folder", 7, after(data_job(lambda a: None), emptied_folder("train")), 2,
         "channel 'train' ({root}/input/data/train) is empty: expected legacy .npy arrays or .parquet files"),
    Case("empty_validation_folder", 7, after(data_job(lambda a: None, "parquet"), emptied_folder("validation")), 2,
         "channel 'validation' ({root}/input/data/validation) is empty"),
    Case("empty_calibration_folder", 7, after(data_job(lambda a: None, channel="calibration"),
                                              emptied_folder("calibration")), 2,
         "channel 'calibration' ({root}/input/data/calibration) is empty"),
    Case("zero_byte_npy", 7, after(data_job(lambda a: None), truncate(train_file("train_X_seq_num_v0.npy"), 0)), 2,
         "channel 'train' file 'train_X_seq_num_v0.npy' array 'X_seq_num': not a readable .npy file ("),
    Case("zero_byte_ccid_npy", 7, after(data_job(lambda a: None, hyperparameters=DUAL_DATA_HP),
                                        truncate(train_file("train_ccid_X_seq_cat_v0.npy"), 0)), 2,
         "file 'train_ccid_X_seq_cat_v0.npy' array 'ccid_X_seq_cat': not a readable .npy file"),
    Case("zero_byte_parquet", 7, after(data_job(lambda a: None, "parquet"), truncate(first_parquet(), 0)), 2,
         "channel 'train' file 'part-00000.parquet': not a readable Parquet file ("),
    Case("truncated_npy", 7, after(data_job(lambda a: None), truncate(train_file("train_X_seq_cat_v0.npy"), 200)), 2,
         "file 'train_X_seq_cat_v0.npy' array 'X_seq_cat': not a readable .npy"),
    Case("corrupt_parquet", 7, after(data_job(lambda a: None, "parquet"),
                                     lambda r: next((r / "input/data/train").glob("*.parquet")).write_bytes(
                                         b"PAR1" + b"\0" * 100)), 2, "not a readable Parquet file"),
    Case("mixed_formats", 7, after(data_job(lambda a: None),
                                   lambda r: write_parquet_channel(r / "input/data/train", synthetic_arrays(DATA_HP))),
         2,
         "holds both .npy and .parquet"),
    Case("pipe_mode", 7, config_job(inputdataconfig={"train": {"TrainingInputMode": "Pipe"}}), 2,
         "'Pipe' is not supported"),
    Case("missing_train_channel", 7, config_job(channels=("validation",)), 2, "channel 'train' is missing"),
    Case("missing_validation_channel", 7, config_job(channels=("train",)), 2, "channel 'validation' is missing"),
    Case("duplicate_channel_alias", 7, config_job(channels=("train", "val", "vali")), 2,
         "both name the validation channel"),
    # 8. Multi-host misconfiguration: refused at once, or a bounded wait that names the host.
    Case("duplicate_hosts", 8, config_job(resourceconfig={"current_host": "algo-1",
                                                          "hosts": ["algo-1", "algo-2", "algo-1"]}), 2,
         "names ['algo-1'] twice"),
    Case("current_host_not_in_hosts", 8, config_job(resourceconfig={"current_host": "algo-3", "hosts": ["algo-1"]}), 2,
         "'current_host' = 'algo-3'"),
    Case("no_hosts", 8, config_job(resourceconfig={"current_host": "algo-1", "hosts": []}), 2,
         "'hosts' = []: expected a non-empty list of host names"),
    Case("master_never_resolves", 8, trained_job({"host_resolution_timeout_s": "1"}, resourceconfig=TWO_HOSTS), 2,
         "host 'algo-1' of resourceconfig.json did not resolve within 1 s", inject=unresolvable_hosts),
    # 9. Minor: the files named, duplicate keys refused, every key known.
    Case("missing_hyperparameters_file", 9, config_job(remove_hyperparameters=True), 2,
         "hyperparameters.json' is missing"),
    Case("null_hyperparameters", 9, config_job("null"), 2, "hyperparameters.json' holds null: expected a JSON object"),
    Case("duplicate_hyperparameter_key", 9, config_job('{"n_cat_features": "40", "n_num_features": "33", '
                                                       '"n_embedding": "120", "n_cat_features": "41"}'), 2,
         "names key 'n_cat_features' twice"),
    Case("duplicate_channel_key", 9, config_job(inputdataconfig='{"train": {}, "train": {}}'), 2,
         "names key 'train' twice"),
    Case("malformed_json", 9, config_job('{"n_cat_features": "40",'), 2, "hyperparameters.json' is not valid JSON"),
    Case("not_an_object", 9, config_job('["n_cat_features"]'), 2, "expected a JSON object"),
    Case("bad_inputdataconfig", 9, config_job(inputdataconfig="{"), 2, "inputdataconfig.json' is not valid JSON"),
    Case("unknown_key", 9, hp(foo_bar="1"), 2, "'foo_bar' is not known"),
    Case("typo_suggests", 9, hp(n_layer_order="6"), 2, "did you mean 'n_layers_order'"),
    Case("wrong_type", 9, hp(n_layers_order="six"), 2, "'n_layers_order' = 'six': expected an integer >= 1"),
    Case("bool_prose", 9, hp(use_time_seq="yes please"), 2, "'use_time_seq' = 'yes please'"),
    Case("missing_required", 9, config_job({"n_num_features": "33", "n_embedding": "120"}), 2,
         "'n_cat_features' is required"),
    Case("inconsistent_heads", 9, hp(num_heads="3"), 2, "'num_heads' = 3: must divide dim_embedding_table"),
    Case("use_mlp", 9, hp(use_mlp="1"), 2, "'use_mlp' = true is not supported"),
    Case("bad_loss_name", 9, hp(loss="MSELoss"), 2, "'loss' = 'MSELoss'"),
    Case("crashing_loss_without_fix", 9, hp(loss="BCEWithLogitsLoss"), 2, "'loss' = 'BCEWithLogitsLoss'"),
    Case("small_vocabulary", 9, hp(n_embedding="20"), 2, "'n_embedding' = 20: must exceed n_num_features"),
    Case("multiclass", 9, hp(n_classes="3"), 2, "'n_classes' = 3"),
    Case("bad_modelname", 9, hp(modelname="Transformer"), 2, "'modelname' = 'Transformer'"),
    Case("selectors_disagree", 9, hp(modelname="OrderFeature", num_seq="2"), 2, "disagree on the model"),
    Case("bad_precision", 9, hp(precision="fp8"), 2, "'precision' = 'fp8'"),
    Case("amp_vs_precision", 9, hp(use_amp="1", precision="32"), 2, "use_amp=1"),
    Case("legacy_load_model", 9, hp(load_model="1"), 2, "'load_model' = '1' is not supported"),
    Case("oversized_value", 9, hp(test_name="x" * 2600), 2, "'test_name'"),
    Case("too_many_keys", 9, config_job({**GOOD_HP, **{f"k{i}": "1" for i in range(100)}}), 2, "104 keys"),
    Case("config_file_missing", 9, hp(config_file="train/nope.json"), 2, "'config_file' = 'train/nope.json'"),
]


# --- running a row -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = make_job(tmp_path_factory.mktemp("material") / "job", QUICK, rows=MATERIAL_ROWS)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert set(snapshot(root / "model")) == artifact_names("tiny")
    return Material(root)


@pytest.fixture
def isolated_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The job runs in this process: its SIGTERM handler, stop flag and environment are put back after."""
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    STOP.requested = False
    yield
    STOP.requested = False
    STOP.launcher = None
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("isolated_process")
@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_catalogue(case: Case, material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "opt_ml/model"
    shutil.copytree(material.root / "model", model)  # the previous complete set
    before = snapshot(model)
    root = case.build(tmp_path, material)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.inject is not None:
        case.inject(monkeypatch, root)

    started_ns = time.time_ns()
    code = main_train(root)
    monkeypatch.undo()

    failure = root / "output/failure"
    log = capsys.readouterr().out
    assert code == case.exit, failure.read_text() if failure.is_file() else log[-3000:]
    if case.failure_in_log:
        assert not failure.exists() and "cannot write the failure file" in log
        assert f"job failed: {case.first_line.format(root=root)}" in log
    elif case.exit:
        text = failure.read_text()
        assert case.first_line.format(root=root) in text.splitlines()[0]
        assert "Traceback" not in text and len(text) <= 1024 + 1
    else:
        assert not failure.exists()
    assert not any((model / name).exists() for name in WORKING_ENTRIES)
    after_run = snapshot(model)
    if case.model == KEPT:
        assert after_run == before, "the model folder must keep its previous complete set"
    elif case.model == STAGED:
        expected = staged_set(snapshot(material.root / "model"))
        assert after_run == {name: hashlib.sha1(content).hexdigest() for name, content in expected.items()}
    else:
        test_name = json.loads((root / "input/config/hyperparameters.json").read_text()).get("test_name", "tiny")
        assert set(after_run) == artifact_names(test_name), "a complete new set, nothing of the previous one"
        # Written by this run (the copied previous set keeps the material's older times); the same job's set can
        # equal the previous one byte for byte.
        assert all(path.stat().st_mtime_ns >= started_ns for path in model.rglob("*") if path.is_file())
    assert not payload_marker(root).exists(), "the pickle's payload ran"


def test_the_catalogue_covers_every_class_with_180_rows() -> None:
    classes = {case.fault_class for case in CATALOGUE}
    assert classes == set(range(1, 10)) and len(CATALOGUE) >= 180
    assert len({case.id for case in CATALOGUE}) == len(CATALOGUE)

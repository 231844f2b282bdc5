"""Artifacts: everything `/opt/ml/model` and `/opt/ml/output/data` hold after training.

Written by global rank 0 only, into `model/.partial` first; once complete it is published with a
journal (`ModelFolder.publish`): the old set moves to `model/.previous`, a `model/.publishing` mark is made,
the new set moves in, and both hidden folders go. A job killed between those renames (SIGKILL:
SIGTERM only sets a flag) leaves a state that `ModelFolder.recover` puts right at the next start, before
anything else: without the mark it rolls back to the old set, with it it completes the new one.
So the model folder holds the previous complete set or the new one.

`/opt/ml/model` (-> model.tar.gz):
- `model.safetensors` (project keys) and `config.json` (resolved config + versions);
- `<test_name>.pt`: the legacy-keyed state dict the legacy packaging and handler load, and the
  weights `code/inference.py` loads;
- `code/inference.py`, `code/inputs.py` and `code/tsa_models/` (the model code) for the SageMaker PyTorch
  inference toolkit (`write_serving`);
- `metrics.json`: every epoch, the best epoch, final metrics per split;
- legacy downstream files, always (not only on early stop, Q22): `score_file.csv` /
  `tag_file.csv` (validation P(fraud) and labels, no header), `cali_score_file.csv` /
  `cali_tag_file.csv`, `percentile_score.pkl` (1000 `[score, k/1000]` pairs of the calibration
  scores) and the same as `percentile_score.json`; `<test_name>.pt.png` (curves, legacy name).
`/opt/ml/output/data`: `predictions_<split>.csv` (id, label, score) and ROC/PR/loss PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tsa.config import JobConfig
from tsa.contract import JobPaths
from tsa.errors import OutputError
from tsa.legacy import legacy_state_dict
from tsa.serving.inference import MODEL_PACKAGE
from tsa.training.evaluation import ChannelScores, Predictions
from tsa.training.metrics import MEASURES, get_performance, positive_probability
from tsa.training.result import EpochResult, TrainingResult
from tsa.weights import save_weights, write_torch

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # the new set while it is written
PREVIOUS = ".previous"  # the old set while the new one moves in
PUBLISHING = ".publishing"  # the mark: the new set is complete and moving in
WORKING = (PARTIAL, PREVIOUS, PUBLISHING)
LEGACY_SCORE_PREFIX = {"validation": "", "calibration": "cali_"}
PERCENTILE_STEPS = 1000


def percentile_map(scores: np.ndarray) -> list[list[float]]:
    """The legacy percentile map: `[np.percentile(scores, 100*k/1000), k/1000]` for k = 0..999."""
    return [[float(np.percentile(scores, 100 * k / PERCENTILE_STEPS)), k / PERCENTILE_STEPS]
            for k in range(PERCENTILE_STEPS)]


# (package, file) copied into `code/`: the handler and the model-input contract it shares with training.
SERVING_FILES = (("tsa.serving", "inference.py"), ("tsa", "inputs.py"))


def write_serving(folder: Path) -> None:
    """`code/`: the handler, the model-input contract it shares with training, and the model code.

    The model code is the package `tsa.models` copied as it is (its `.py` files) into
    `code/tsa_models/`: the handler builds the plain module from it, `config.json` and the state dict
    `<test_name>.pt`, under the AWS PyTorch inference image's torch 2.6.0 and newer ones (the versions
    tested: docs/serving.md). No TorchScript `model.pt`: TorchScript is deprecated upstream, a file
    written by this torch is not known to load in an older one, and nothing here reads it any more.
    """
    code = folder / "code"
    (code / MODEL_PACKAGE).mkdir(parents=True, exist_ok=True)
    for package, name in SERVING_FILES:
        (code / name).write_text(resources.files(package).joinpath(name).read_text())
    for source in sorted(resources.files("tsa.models").iterdir(), key=lambda item: item.name):
        if source.name.endswith(".py"):
            (code / MODEL_PACKAGE / source.name).write_text(source.read_text())


def write_metrics(folder: Path, result: TrainingResult, final: dict[str, dict[str, float]]) -> None:
    data = {"epochs": [asdict(epoch) for epoch in result.history], "best_epoch": result.best_epoch,
            "best_validation_auc": result.best_auc, "early_stop": result.early_stop.as_dict(), "final": final}
    (folder / "metrics.json").write_text(json.dumps(data, indent=2) + "\n")


def plot_curves(path: Path, history: list[EpochResult]) -> None:
    """Loss and AUC per epoch (the legacy `<test_name>.pt.png`)."""
    epochs = [r.epoch for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in history], label="training")
    left.plot(epochs, [r.validation_loss for r in history], label="validation")
    left.set(xlabel="epoch", ylabel="loss per example", title="loss")
    left.legend()
    right.plot(epochs, [r.validation_auc for r in history], label="validation AUC")
    right.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_roc_pr(path: Path, predictions: Predictions, split: str) -> None:
    from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

    prob = positive_probability(predictions.scores)
    fpr, tpr, _ = binary_roc(prob, predictions.labels)
    precision, recall, _ = binary_precision_recall_curve(prob, predictions.labels)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(fpr.numpy(), tpr.numpy())
    left.plot([0, 1], [0, 1], linestyle=":")
    left.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({split})")
    right.plot(recall.numpy(), precision.numpy())
    right.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({split})")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_predictions(path: Path, predictions: Predictions, ids: np.ndarray | None) -> None:
    """`id,label,score` per example, in row order."""
    prob = positive_probability(predictions.scores).numpy()
    labels = predictions.labels.numpy()
    keys = ids if ids is not None else predictions.rows.numpy()
    with path.open("w") as handle:
        handle.write("id,label,score\n")
        for key, label, score in zip(keys, labels, prob, strict=True):
            handle.write(f"{key},{int(label)},{score:.10g}\n")


def write_score_column(path: Path, values: np.ndarray, integer: bool = False) -> None:
    """One value per line, no header; floats in full precision (repr), as the legacy CSVs held them."""
    text = "".join(f"{int(v)}\n" if integer else f"{float(v)!r}\n" for v in values)
    path.write_text(text, encoding="utf-8")


def write_legacy_scores(folder: Path, scores: dict[str, ChannelScores]) -> None:
    """Score/tag files and the percentile map, as the legacy early-stop path wrote them (Q22: always).

    Line i of a score file is the i-th evaluated example: the legacy gathered sampler order by
    default, row order with `fix_evaluation_order` (the prediction files name each row's id).
    """
    for split, prefix in LEGACY_SCORE_PREFIX.items():
        if split in scores:
            p = scores[split].evaluated
            write_score_column(folder / f"{prefix}score_file.csv", positive_probability(p.scores).numpy())
            write_score_column(folder / f"{prefix}tag_file.csv", p.labels.numpy(), integer=True)
    source = "calibration" if "calibration" in scores else "validation"
    if source != "calibration":
        log.warning("no calibration channel: the percentile map is built from the validation scores")
    table = percentile_map(positive_probability(scores[source].evaluated.scores).numpy())
    with (folder / "percentile_score.pkl").open("wb") as handle:
        pickle.dump(table, handle)
    (folder / "percentile_score.json").write_text(json.dumps(table) + "\n")


class ModelFolder:
    """`/opt/ml/model`: its working names, and the publish and the recovery (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path / PARTIAL
        self.previous = path / PREVIOUS
        self.publishing = path / PUBLISHING

    def _published_entries(self) -> list[Path]:
        """What the model folder shows (everything but the publish's own working entries)."""
        return sorted(item for item in self.path.iterdir() if item.name not in WORKING)

    def _complete_publish(self) -> None:
        """Phase two: the new set from `.partial` in, then the working entries out (idempotent)."""
        if self.partial.is_dir():
            _move_contents(self.partial, self.path)
        if self.previous.exists():
            shutil.rmtree(self.previous)
        self.publishing.unlink(missing_ok=True)

    def publish(self) -> None:
        """Replace the folder's set by the complete one in `.partial`.

        Nothing of an older set survives, whatever its file names (another `test_name`, another job).
        """
        _remove(self.previous)
        self.previous.mkdir()
        for item in self._published_entries():
            os.replace(item, self.previous / item.name)
        self.publishing.touch()  # from here on the new set is the one to complete
        self._complete_publish()

    def recover(self) -> None:
        """Put right what a job killed while exporting left in the folder (before anything else, and after a
        failed write): the previous complete set back, or the new one completed if it was moving in."""
        if not self.path.is_dir():
            return
        try:
            self._recover()
        except OSError as exc:
            raise OutputError.writing("the model folder's recovery", exc, self.path,
                                      "an earlier attempt left it mid-publish") from exc

    def _recover(self) -> None:
        if self.publishing.exists():
            log.warning("completing the publish of the artifacts an earlier attempt was killed in: %s", self.path)
            self._complete_publish()
            return
        if self.previous.is_dir():
            log.warning("rolling %s back to the artifacts it held before an interrupted publish", self.path)
            _move_contents(self.previous, self.path)
        if self.partial.exists():
            log.warning("removing incomplete artifacts %s from an earlier attempt", self.partial)
            _remove(self.partial)

    def discard_partial(self) -> None:
        """Remove the incomplete set of this attempt (a stop or a write error before the publish)."""
        _remove(self.partial)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_contents(source: Path, target: Path) -> None:
    """Every entry of `source` renamed into `target`, then `source` removed (the publish's one move)."""
    for item in sorted(source.iterdir()):
        os.replace(item, target / item.name)
    source.rmdir()


def export_artifacts(paths: JobPaths, config: JobConfig, result: TrainingResult, *, resume_from: Path,
                     stop_point: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Write every artifact (rank 0 only); returns the final metrics per split.

    The output folder's predictions and plots come first, then the model set in `model/.partial`,
    then the publish. `stop_point` runs after every file or plot (the job's SIGTERM check: a
    stop ends the export within one write, without touching `model/`) and last right before the
    publish. A write that fails (disk full, read-only, permissions) leaves `model/` with its
    previous set, or the new one if it was moving in, and is reported naming `resume_from`.
    """
    model = ModelFolder(paths.model_dir)
    try:
        final = _write(paths, config, result, stop_point, model.partial)
        model.publish()
    except OSError as exc:
        model.recover()
        outcome = f"the model folder keeps a complete set; the job resumes from {resume_from}"
        raise OutputError.writing("the artifacts", exc, model.path, outcome) from exc
    except BaseException:  # a stop: the folder keeps what it held
        model.discard_partial()
        raise
    return final


def _write(paths: JobPaths, config: JobConfig, result: TrainingResult, stop_point: Callable[[], None],
           partial: Path) -> dict[str, Any]:
    """The output folder's files, then the complete model set in `partial`; the final metrics per split."""
    _remove(partial)
    name = config.runtime.test_name
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    for split, s in result.scores.items():
        write_predictions(paths.output_data_dir / f"predictions_{split}.csv", s.by_row, result.ids.get(split))
        stop_point()
        plot_roc_pr(paths.output_data_dir / f"roc_pr_{split}.png", s.by_row, split)
        stop_point()
    plot_curves(paths.output_data_dir / "loss_curves.png", result.history)
    stop_point()

    partial.mkdir(parents=True)
    save_weights(result.model, config, partial)
    write_torch(legacy_state_dict(result.model), partial / f"{name}.pt")
    write_legacy_scores(partial, result.scores)
    stop_point()
    final = {split: {**get_performance(s.evaluated.scores, s.evaluated.labels, list(MEASURES)),
                     "loss_logged": s.logged_loss} for split, s in result.scores.items()}
    write_metrics(partial, result, final)
    shutil.copyfile(paths.output_data_dir / "loss_curves.png", partial / f"{name}.pt.png")
    write_serving(partial)
    stop_point()
    return final

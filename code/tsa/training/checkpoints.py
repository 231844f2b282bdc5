"""The checkpoint folder: what a stopped or spot-interrupted job resumes from, and the one place its file
names are composed.

The folder is `checkpointconfig.json`'s `LocalPath` (SageMaker syncs it with S3), else the
`checkpoint_dir` hyperparameter, else `<job root>/checkpoints` (`contract.choose_checkpoint_dir`). It holds
- `last.ckpt`: Lightning's checkpoint of the whole training state (`callbacks.SpotCheckpoint`);
- `best-model.safetensors`: the best epoch's weights so far (`system.TsaSystem`), which the final scoring
  reloads;
- `mlflow-run.json`: the tracked job's MLflow run, which a resumed job goes on in (`tracking.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointFolder:
    path: Path
    source: str  # where the choice came from, for the log and the messages
    ignored: bool = False  # `ignore_checkpoint`: the job trains from the start over what the folder holds

    @property
    def last(self) -> Path:
        return self.path / "last.ckpt"

    @property
    def best_weights(self) -> Path:
        return self.path / "best-model.safetensors"

    @property
    def tracking_run(self) -> Path:
        return self.path / "mlflow-run.json"

    @property
    def resuming(self) -> bool:
        """Whether a job started now resumes: a `last.ckpt` is there, and not ignored."""
        return self.last.is_file() and not self.ignored

    def resume_files(self) -> list[Path]:
        """The files a resume reads, which every host of a multi-host job must agree on."""
        return [self.last, self.best_weights]

"""The Python API: the `tsa train` job from a script, e.g. a SageMaker script-mode entry point.

    import tsa.api
    metrics = tsa.api.train({"n_cat_features": 40, "n_num_features": 33, "n_embedding": 120})

It runs exactly the job `tsa train` runs (the same validation, training, checkpoints and
artifacts) on an `/opt/ml`-shaped folder: `job_dir`, else `$SAGEMAKER_BASE_DIR`, else `/opt/ml`,
which is where a script-mode script runs (`SM_MODEL_DIR` is its `model/`, `SM_CHANNEL_TRAIN` its
`input/data/train`). Channels are read from `input/data`; artifacts go to `model/` and
`output/data`. Hyperparameters take the values of `hyperparameters.json` (strings) or plain Python
values (`True`, `5e-5`, `3`), decoded per field as the job decodes them.

Errors are raised, not written to the failure file: a `tsa.errors.JobError` for what the caller
can fix, `tsa.training.stop.StopRequested` after a SIGTERM (a resumable checkpoint was written).
Under multi-GPU training Lightning starts the other ranks by running the same script again, so
everything before `train` in the script runs once per rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tsa.contract import JobPaths
from tsa.entrypoint import train_job
from tsa.training import install_stop_handler


def train(hyperparameters: Mapping[str, Any], *, job_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Train and write the artifacts; returns the final metrics per split (`{}` on ranks other than 0)."""
    install_stop_handler()
    return train_job(JobPaths.from_root(job_dir), dict(hyperparameters))

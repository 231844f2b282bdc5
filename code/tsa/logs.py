"""What a job process prints: one log format for every line, and the third-party lines it drops.

Input: nothing; `configure_logging()` is the first call of `tsa train` (every rank) and `tsa serve`.
Output: records on stdout, one a line, as `<time> <LEVEL> [rank N] <logger>: <message>` (CloudWatch
shows a record per line; the rank tags DDP). The job's `METRIC ...` lines are printed beside them.

Non-obvious: Lightning gives its loggers bare handlers of their own at import (`lightning`,
`lightning.pytorch`, `lightning.fabric`); they are removed, so Lightning's records that matter
(`Trainer.fit` stopped, Restoring states, Initializing distributed) come in this format too. Python
warnings left after the filter below are logged (`py.warnings`), one line each.

The one filter (third-party output this project causes on purpose or that says nothing):
- Lightning's `GPU available: ...`, `TPU available: ...`, `HPU available: ...` and its
  `distributed_backend=... All distributed processes registered` box: the job's `run plan` line
  states the accelerator, the processes and the nodes.
- Lightning's `💡 Tip:` lines (litlogger, litmodels): advertisements.
- Lightning's warning `A OneCycleLR scheduler is using 'interval': 'epoch'`: the legacy recipe
  steps OneCycleLR once per epoch with total_steps = max_epoch (legacy spec Q19), which is what
  `TsaSystem.configure_optimizers` asks for; 'step' would change every learning rate.
- Lightning's warning `Your IterableDataset has __len__ defined`: it fears workers that each
  yield the whole stream; `BatchStream` splits its batches across workers itself, so the length
  is exact, and Lightning counts an epoch's batches with it (progress, resumed epochs).
- torch's FutureWarning `isinstance(treespec, LeafSpec) is deprecated`: raised inside Lightning
  (2.6.6, the newest, under torch 2.13); no code of ours uses LeafSpec.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import TextIO

# Records of Lightning's loggers whose message starts so: dropped.
DROPPED_LIGHTNING_LINES = re.compile(r"(GPU|TPU|HPU) available: |💡 Tip: |-+\ndistributed_backend=")
# (category, start of the message) of the warnings dropped.
DROPPED_WARNINGS = (
    (RuntimeWarning, "A `OneCycleLR` scheduler is using 'interval': 'epoch'."),
    (UserWarning, "Your `IterableDataset` has `__len__` defined."),
    (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropLightningNoise(logging.Filter):
    """Drops the Lightning records named in `DROPPED_LIGHTNING_LINES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("lightning") and DROPPED_LIGHTNING_LINES.match(record.getMessage()))


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: TextIO | None = None, line: str | None = None) -> None:
    """`warnings.showwarning` replacement: one log line instead of two bare stderr lines."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


def configure_logging(level: int = logging.INFO) -> None:
    """One plain line per record (CloudWatch-friendly), rank-tagged under DDP; the filter above."""
    import lightning  # noqa: F401  (importing it adds its bare handlers: first, so that they go below)

    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropLightningNoise())
    for name in LIGHTNING_LOGGERS:
        lightning_logger = logging.getLogger(name)
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
        lightning_logger.propagate = True
    for category, start in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)
    warnings.showwarning = log_warning

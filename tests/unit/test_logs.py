"""What a job process prints (`tsa.logs`): one format for every line, the documented filter and nothing more.

Whole `tsa train` runs holding the job's lines only (one process, two processes) are checked in
`test_training_e2e.py`. Run: .venv/bin/pytest tests/unit/test_logs.py
"""

from __future__ import annotations

import re
import subprocess
import sys

JOB_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \[rank \d+\] [\w.-]+: ")

SCRIPT = r'''
import logging, warnings
from tsa.logs import configure_logging

configure_logging()
rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
rank_zero.info("GPU available: False, used: False")
rank_zero.info("TPU available: False, using: 0 TPU cores")
rank_zero.info("\U0001f4a1 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
logging.getLogger("lightning.fabric.utilities.rank_zero").info(
    "-" * 100 + "\ndistributed_backend=gloo\nAll distributed processes registered. Starting with 2 processes\n")
rank_zero.info("`Trainer.fit` stopped: `max_epochs=3` reached.")
distributed = logging.getLogger("lightning.fabric.utilities.distributed")
distributed.info("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2")
logging.getLogger("tsa").info("GPU available: False, used: False")
warnings.warn("A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': 'step'?",
              RuntimeWarning)
warnings.warn("Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading",
              UserWarning)
warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`", FutureWarning)
warnings.warn("some other warning", UserWarning)
'''


def test_lightning_lines_come_in_the_job_format_less_the_filtered_ones() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no bare handler left on Lightning's loggers, no bare warning
    lines = proc.stdout.splitlines()
    assert all(JOB_LINE.match(line) for line in lines), lines
    messages = [JOB_LINE.sub("", line) for line in lines]
    assert messages == [
        "`Trainer.fit` stopped: `max_epochs=3` reached.",
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2",
        "GPU available: False, used: False",  # the filter is for Lightning's records only
        "UserWarning: some other warning (<string>:21)",  # a warning not filtered: one line, in the format
    ]
    assert " lightning.pytorch.utilities.rank_zero: `Trainer.fit`" in lines[0]
    assert " py.warnings: " in lines[3]

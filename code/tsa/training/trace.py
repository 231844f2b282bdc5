"""The run trace: what a reviewer needs to compare a run with a legacy run, step by step.

With `trace=true`, every rank writes `<output/data>/trace/rank<R>.jsonl`, one JSON object per
training epoch and one per post-training evaluation pass:

- epoch records: `epoch`, `train_rows` (the example of each training row, in order; consecutive
  chunks of `batch_size` are the batches), `train_step_losses` (each batch's loss as the legacy
  logged it, `loss.item() / len(batch)`), `validation_rows`, `validation_loss_logged`,
  `validation_auc`, `lr`, `rng_before_forward` (a digest of the global torch RNG state before
  every forward: training batches, then validation batches) and, on rank 0, `weights_sha1`
  (per legacy state-dict key, the first 16 hex digits of SHA-1 over the tensor's raw bytes
  after the epoch's training);
- final records: `final` (the channel), `epoch_index` (the sampler epoch of that pass), `rows`,
  `rng_before_forward`;
- one `init` record first: `weights_sha1` of the model as built and `rng_after_init` (the RNG
  digest right after construction).

The digests are the ones of `../shared/docs/legacy_run_fixtures.md` §3, so a trace is compared
with a legacy run fixture directly. Tracing costs one host synchronisation per step (the loss
value); it changes no number.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def rng_digest() -> str:
    """SHA-1 (16 hex digits) of the global torch RNG state."""
    return hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]


def weight_digests(model: nn.Module) -> dict[str, str]:
    """Per legacy state-dict key (aliases included): SHA-1 (16 hex digits) of the raw bytes."""
    digests = {}
    for key, tensor in model.state_dict().items():
        raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        digests[key] = hashlib.sha1(raw).hexdigest()[:16]
    return digests


class RunTrace:
    """Collects one rank's trace records and appends them to its JSON-lines file."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.rank: int | None = None  # known once the process group is up (`bind`)
        self.record: dict[str, Any] = {}
        self._pending: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def path(self) -> Path | None:
        return None if self.folder is None or self.rank is None else self.folder / f"rank{self.rank}.jsonl"

    def bind(self, rank: int) -> None:
        """This process's global rank: names the file; records taken before are written now."""
        self.rank = rank
        pending, self._pending = self._pending, []
        for record in pending:
            self._append(record)

    def record_init(self, model: nn.Module) -> None:
        """The model as built, and the RNG state right after (call right after construction)."""
        if self.enabled:
            self.record = {"init": True, "weights_sha1": weight_digests(model), "rng_after_init": rng_digest()}
            self.write()

    def start(self, **fields: Any) -> None:
        """Begin a record (an epoch or a final evaluation pass)."""
        if self.enabled:
            self.record = {**fields, "rng_before_forward": []}

    def before_forward(self) -> None:
        if self.enabled:
            self.record.setdefault("rng_before_forward", []).append(rng_digest())

    def extend(self, key: str, values: list[Any]) -> None:
        if self.enabled:
            self.record.setdefault(key, []).extend(values)

    def set(self, **fields: Any) -> None:
        if self.enabled:
            self.record.update(fields)

    def write(self) -> None:
        """Append the current record (one line) and start afresh."""
        if not self.enabled or not self.record:
            return
        record, self.record = self.record, {}
        if self.rank is None:
            self._pending.append(record)
        else:
            self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        path = self.path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

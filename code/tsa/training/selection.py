"""Model selection and early stopping, with the legacy rounding and tie rules (Q21).

The legacy loop rounds the validation AUC to 4 decimals, saves a new best model only when the
rounded AUC is *strictly* greater than the best so far (which starts at 0), and runs early
stopping on `-auc` where ties *do* count as improvement (they reset the patience counter).
Lightning's own EarlyStopping treats ties as no improvement, so the rule is written out here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LegacyEarlyStopping:
    """`pytorchtools.EarlyStopping(patience, delta=0)` fed `val_loss = -auc`."""

    patience: int
    delta: float = 0.0
    counter: int = 0
    best_score: float | None = None
    early_stop: bool = False

    def update(self, auc: float) -> None:
        score = auc  # legacy: score = -val_loss with val_loss = -auc
        if self.best_score is None:
            self.best_score = score
        elif score < self.best_score + self.delta:
            self.counter += 1
            if self.counter >= self.patience:
                self.early_stop = True
        else:
            self.best_score = score
            self.counter = 0


@dataclass
class BestModelTracker:
    """The legacy best-model rule: save iff the rounded AUC is strictly above the best (start 0)."""

    best_auc: float = 0.0
    best_epoch: int | None = None

    def update(self, auc: float, epoch: int) -> bool:
        """Record `auc` of `epoch`; True when this epoch is the new best."""
        if auc > self.best_auc:
            self.best_auc, self.best_epoch = auc, epoch
            return True
        return False


@dataclass(frozen=True)
class EarlyStop:
    """Early stopping as the legacy loop reported it (legacy_run_fixtures.md §6).

    The stop flag raised after epoch e ends training before epoch e + 1; a flag raised after the
    last epoch changes nothing, and the legacy did not count it as an early stop.
    """

    decided_after_epoch: int | None
    max_epoch: int

    @property
    def fired(self) -> bool:
        return self.decided_after_epoch is not None and self.decided_after_epoch < self.max_epoch - 1

    def as_dict(self) -> dict[str, bool | int | None]:
        return {"fired": self.fired, "decided_after_epoch": self.decided_after_epoch if self.fired else None,
                "exit_at_epoch": self.decided_after_epoch + 1 if self.fired and self.decided_after_epoch is not None
                else None}

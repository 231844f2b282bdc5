"""Model selection and early stopping, with the legacy rounding and tie rules (Q21).

The legacy loop rounds the validation AUC to 4 decimals, saves a new best model only when the
rounded AUC is *strictly* greater than the best so far (which starts at 0), and runs early
stopping on `-auc` where ties *do* count as improvement (they reset the patience counter).
Lightning's own EarlyStopping treats ties as no improvement, so the rule is written out here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass
class ModelSelection:
    """The legacy selection of one run: best model, early stopping, and when the stop was decided."""

    patience: int
    max_epoch: int
    tracker: BestModelTracker = field(default_factory=BestModelTracker)
    stopper: LegacyEarlyStopping = field(init=False)
    stop_decided_after: int | None = None

    def __post_init__(self) -> None:
        self.stopper = LegacyEarlyStopping(patience=self.patience)

    def update(self, auc: float, epoch: int) -> bool:
        """Record epoch `epoch`'s rounded validation AUC; True when it is the new best model."""
        improved = self.tracker.update(auc, epoch)
        self.stopper.update(auc)
        if self.stopper.early_stop and self.stop_decided_after is None:
            self.stop_decided_after = epoch
        return improved

    @property
    def should_stop(self) -> bool:
        return self.stop_decided_after is not None

    @property
    def early_stop(self) -> EarlyStop:
        return EarlyStop(self.stop_decided_after, self.max_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": asdict(self.tracker), "stopper": asdict(self.stopper),
                "stop_decided_after": self.stop_decided_after}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker = BestModelTracker(**state["tracker"])
        self.stopper = LegacyEarlyStopping(**state["stopper"])
        self.stop_decided_after = state["stop_decided_after"]

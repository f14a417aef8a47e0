"""The options of an Optuna study (`deeprec tune`) that do not depend on the data: checked before
TensorFlow, Optuna or the data are loaded, so a mistyped option fails in about a second."""

from __future__ import annotations

from dataclasses import dataclass

from deeprec.config import DEFAULT_FOLDS
from deeprec.errors import DeeprecError

PRUNERS = ("median", "hyperband", "none")
PRUNE_EVERY = ("epoch", "fold")
DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_GRACE_PERIOD = 30


@dataclass(frozen=True)
class PrunerSettings:
    name: str = "median"
    startup_trials: int = 5  # median: complete trials before any pruning
    warmup_steps: int = 5  # median, per-epoch checks: steps of a trial before it may be pruned (see deeprec.tune)
    every: str = "epoch"  # "epoch": per-epoch and fold-level checks; "fold": fold-level checks only

    def label(self) -> str:
        """How the runs record it (tag `pruner`): `median(startup_trials=5, warmup_steps=5, every=epoch)`."""
        if self.name == "none":
            return "none"
        if self.name == "hyperband":  # its own schedule: the median settings do not apply
            return f"hyperband(every={self.every})"
        return f"median(startup_trials={self.startup_trials}, warmup_steps={self.warmup_steps}, every={self.every})"


@dataclass(frozen=True)
class TuneOptions:
    folds: int = DEFAULT_FOLDS
    n_trials: int = 20
    n_workers: int = 1
    study_name: str | None = None
    storage: str | None = None
    pruner: PrunerSettings = PrunerSettings()
    refit: bool = True
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: int = DEFAULT_GRACE_PERIOD

    def validate(self) -> TuneOptions:
        if self.folds < 2:
            raise DeeprecError(f"folds: need at least 2, got {self.folds}")
        if self.n_trials < 0:
            raise DeeprecError(f"n-trials: must be >= 0, got {self.n_trials}")
        if self.n_workers < 1:
            raise DeeprecError(f"n-workers: must be >= 1, got {self.n_workers}")
        if self.pruner.name not in PRUNERS:
            raise DeeprecError(f"pruner: unknown pruner {self.pruner.name!r}; choose one of {', '.join(PRUNERS)}")
        if self.pruner.startup_trials < 0 or self.pruner.warmup_steps < 0:
            raise DeeprecError("pruner-startup-trials and pruner-warmup-steps must be >= 0")
        if self.pruner.every not in PRUNE_EVERY:
            raise DeeprecError(f"prune-every: expected one of {', '.join(PRUNE_EVERY)}, got {self.pruner.every!r}")
        if self.heartbeat_interval < 1:
            raise DeeprecError(f"heartbeat-interval: must be a whole number of seconds >= 1, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise DeeprecError(f"grace-period: must exceed the heartbeat interval ({self.heartbeat_interval} s), got {self.grace_period}")
        if self.study_name is not None and (not self.study_name.strip() or any(c in self.study_name for c in "'\"\n`")):
            raise DeeprecError(f"study-name: must be non-empty, without quotes or newlines, got {self.study_name!r}")
        return self

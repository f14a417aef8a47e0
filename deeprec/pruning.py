"""Pruning a study's trials: the steps at which a trial reports its validation RMSE to Optuna, the
pruner each `--pruner` setting makes, and the reporter that feeds a trial's curve to it.

A trial trains K folds of up to E epochs. Each epoch of fold k reports at step k*(E+1) + epoch,
and after each fold the running mean of the folds' best validation RMSE reports at step
(k+1)*(E+1), so every fold's checks come after the previous fold's and a pruner can compare trials
at the same point. Needs Optuna only: `deeprec replay-pruning` replays these rules on a finished
study without loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna

from deeprec.tune_options import PrunerSettings


def make_pruner(settings: PrunerSettings, folds: int, epochs: int) -> optuna.pruners.BasePruner:
    if settings.name == "median":
        # Checked after whole folds only, a trial has already had its warm-up: a whole fold.
        warmup = 0 if settings.every == "fold" else settings.warmup_steps
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=warmup)
    if settings.name == "hyperband":
        first_check = epochs + 1 if settings.every == "fold" else 1
        return optuna.pruners.HyperbandPruner(min_resource=first_check, max_resource=folds * (epochs + 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def epoch_step(fold: int, epoch: int, epochs: int) -> int:
    """Intermediate step of epoch `epoch` (from 1) of fold `fold` (from 0)."""
    return fold * (epochs + 1) + epoch


def fold_step(fold: int, epochs: int) -> int:
    """Intermediate step of the fold-level check after fold `fold` (from 0)."""
    return (fold + 1) * (epochs + 1)


class TrialReporter:
    """Reports a trial's validation RMSE to Optuna per epoch (unless `every` is "fold") and per
    fold; raises TrialPruned when the pruner says so. `sink(record, step)` sees each epoch record
    first (e.g. to log it)."""

    def __init__(self, trial: optuna.Trial, epochs: int, folds: int, sink: Callable[[dict, int], None] | None = None, every: str = "epoch") -> None:
        self.trial = trial
        self.epochs = epochs
        self.folds = folds
        self.sink = sink
        self.every = every

    def on_epoch(self, fold: int, record: dict) -> None:
        step = epoch_step(fold, record["epoch"], self.epochs)
        if self.sink is not None:
            self.sink(record, step)
        if self.every == "fold":
            return
        self.trial.report(record["valid_rmse"], step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"fold {fold + 1} epoch {record['epoch']}: validation RMSE {record['valid_rmse']:.4f}")

    def on_fold(self, fold: int, fold_scores: list[float]) -> None:
        running = float(np.mean(fold_scores))
        self.trial.report(running, fold_step(fold, self.epochs))
        if fold + 1 < self.folds and self.trial.should_prune():
            raise optuna.TrialPruned(f"after fold {fold + 1}: mean validation RMSE so far {running:.4f}")

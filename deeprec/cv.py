"""K-fold cross-validation over the non-test ratings (no MLflow here; see tracking.track_cv).

The test split of `cfg.split` is set aside first and never touched: the K folds partition the
remaining (train + validation) ratings, stratified by user, seeded by `cfg.seed`, so the same
seed gives the same folds on every call. Each fold trains with early stopping on its validation
fold. The CV score is the mean of the folds' best validation RMSE (per rating); its spread is the
population standard deviation across folds (numpy's default, ddof=0). `refit` retrains on all
non-test ratings for the CV-chosen number of epochs (the folds' mean best epoch, rounded) and
evaluates on the test split once. `ensemble` keeps each fold model's test predictions (clipped)
and scores their average on the test split once: K models that each saw (K-1)/K of the non-test
ratings, chosen by their own validation fold, combined without looking at the test ratings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deeprec import datasets, experiment, metrics, preparation
from deeprec.config import DEFAULT_FOLDS, TrainConfig
from deeprec.errors import DeeprecError
from deeprec.splits import Split


FoldEpochCallback = Callable[[int, dict], None]  # (fold index from 0, epoch record)


@dataclass(frozen=True)
class FoldResult:
    fold: int  # 0-based
    best_valid_rmse: float
    best_epoch: int
    history: list[dict]
    test_predictions: np.ndarray | None = None  # clipped, in the base split's test order (ensembles only)


@dataclass(frozen=True)
class CVResult:
    folds: list[FoldResult]

    @property
    def scores(self) -> np.ndarray:
        return np.array([f.best_valid_rmse for f in self.folds])

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def std(self) -> float:
        return float(self.scores.std())  # ddof=0: the spread of these K folds

    @property
    def chosen_epochs(self) -> int:
        return max(1, int(round(np.mean([f.best_epoch for f in self.folds]))))

    def metrics(self) -> dict[str, float]:
        return {"cv_valid_rmse_mean": self.mean, "cv_valid_rmse_std": self.std, "cv_chosen_epochs": float(self.chosen_epochs)}

    def ensemble_predictions(self) -> np.ndarray:
        """The fold models' mean clipped test prediction (by Minkowski's inequality its RMSE is at
        most the folds' mean RMSE)."""
        if any(f.test_predictions is None for f in self.folds):
            raise DeeprecError("ensemble: the folds were run without keeping their test predictions")
        return np.mean([f.test_predictions for f in self.folds], axis=0)


def ensemble_metrics(result: CVResult, dataset: datasets.Dataset, test_rows: np.ndarray) -> dict[str, float]:
    """`ensemble_test_rmse`, `ensemble_test_rmse_user_avg`, ...: the fold models' average, scored once."""
    metrics = experiment.heldout_metrics(dataset.ratings, test_rows, result.ensemble_predictions(), dataset.ratings.scale)
    return {f"ensemble_{k}": v for k, v in metrics.items()}


def run_fold(
    cfg: TrainConfig, dataset: datasets.Dataset, split: Split, fold: int, on_epoch: FoldEpochCallback | None = None, ensemble: bool = False
) -> FoldResult:
    """Train one fold with early stopping on its validation ratings; with `ensemble`, also keep the
    fold model's clipped predictions of the test ratings (unseen users/items: the fold's bias baseline)."""
    from deeprec.train import fit

    prepared = preparation.prepare(cfg, dataset=dataset, split=split)
    if prepared.data.matrices.valid.nnz == 0:  # fold_splits refuses such folds; a split of the caller's may not
        raise DeeprecError(f"{split.name}: no validation rating has both its user and its item in the training ratings")
    model, history = fit(cfg, prepared.data, on_epoch=None if on_epoch is None else (lambda record: on_epoch(fold, record)))
    valid = [h["valid_rmse"] for h in history]
    best = int(np.argmin(valid))
    test_predictions = None
    if ensemble:
        raw, _ = experiment.test_predictions(model, prepared, experiment.bias_fallback(prepared))
        test_predictions = metrics.clip(raw, prepared.data.scale)
    return FoldResult(fold, float(valid[best]), int(history[best]["epoch"]), history, test_predictions)


def cross_validate(
    cfg: TrainConfig,
    folds: int = DEFAULT_FOLDS,
    dataset: datasets.Dataset | None = None,
    on_epoch: FoldEpochCallback | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
    ensemble: bool = False,
) -> CVResult:
    """Train every fold in turn; `on_fold` sees each result as soon as it is known."""
    dataset = dataset or datasets.load(datasets.get_spec(cfg.dataset))
    _, splits = preparation.fold_splits(cfg, dataset, folds)
    results = []
    for fold, split in enumerate(splits):
        result = run_fold(cfg, dataset, split, fold, on_epoch, ensemble=ensemble)
        results.append(result)
        if on_fold is not None:
            on_fold(result)
    return CVResult(results)


def refit(cfg: TrainConfig, epochs: int, dataset: datasets.Dataset | None = None, on_epoch: Callable[[dict], None] | None = None) -> experiment.Outcome:
    """Train on all non-test ratings for `epochs` epochs (no early stopping), evaluate on test once."""
    dataset = dataset or datasets.load(datasets.get_spec(cfg.dataset))
    base = dataset.split(cfg.split)
    empty = np.array([], dtype=np.int64)
    everything = Split(f"{cfg.split}-refit", base.seed, np.sort(np.concatenate([base.train, base.valid])), empty, base.test)
    refit_cfg = cfg.replace(epochs=epochs, patience=0)
    return experiment.run(refit_cfg, preparation.prepare(refit_cfg, dataset=dataset, split=everything), on_epoch=on_epoch)

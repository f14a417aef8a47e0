"""Cross-validation: folds over the non-test ratings, aggregation, refit, and the MLflow runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import synthetic_ratings, write_ml1m
from deeprec import cv, datasets, preparation
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError


@pytest.fixture
def workspace(mlflow_store: Path) -> Path:
    """Tiny ML-1M-format data and a private tracking store, both under tmp_path."""
    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=40, n_items=25, per_user=(12, 20), seed=6))
    return mlflow_store


TINY = dict(orientation="user", arch="6", epochs=2, batch_size=8, patience=0)


def test_folds_partition_the_non_test_ratings(workspace: Path) -> None:
    cfg = TrainConfig(**TINY).validate()
    dataset = datasets.load(datasets.get_spec("ml-1m"))
    base, folds = preparation.fold_splits(cfg, dataset, 3)
    pool = np.sort(np.concatenate([base.train, base.valid]))
    np.testing.assert_array_equal(np.sort(np.concatenate([f.valid for f in folds])), pool)
    for fold in folds:
        np.testing.assert_array_equal(fold.test, base.test)  # the test split is set aside, untouched
        assert not np.intersect1d(fold.train, base.test).size and not np.intersect1d(fold.valid, base.test).size
        np.testing.assert_array_equal(np.sort(np.concatenate([fold.train, fold.valid])), pool)
    _, again = preparation.fold_splits(cfg, dataset, 3)
    assert all(np.array_equal(a.valid, b.valid) for a, b in zip(folds, again))  # same seed, same folds
    _, other = preparation.fold_splits(cfg.replace(seed=7), dataset, 3)
    assert not np.array_equal(folds[0].valid, other[0].valid)
    with pytest.raises(DeeprecError, match="folds: need at least 2"):
        preparation.fold_splits(cfg, dataset, 1)
    with pytest.raises(DeeprecError, match="folds: at most 100"):
        preparation.fold_splits(cfg, dataset, 100_000)


def test_folds_whose_validation_no_fold_model_can_predict_are_refused(tmp_path: Path) -> None:
    """Held-out ratings of items without a training rating are left out of a fold's matrices; a
    fold left with none would have no validation RMSE (it was a KeyError in run_fold)."""
    from conftest import write_lines

    rows = [f"{u},{10 * u + j},{1 + j % 5}" for u in range(20) for j in range(10)]  # every item rated once
    dataset = datasets.load(datasets.get_spec(f"csv:{write_lines(tmp_path / 'once.csv', rows)}?scale=1,5"))
    cfg = TrainConfig(**TINY).validate()
    with pytest.raises(DeeprecError, match=r"^fold 1 of 2 cannot be validated: each of its \d+ validation ratings"):
        preparation.fold_splits(cfg, dataset, 2)
    base = dataset.split(cfg.split)  # a split of the caller's own goes to run_fold unchecked
    with pytest.raises(DeeprecError, match="holdout: no validation rating has both its user and its item"):
        cv.run_fold(cfg, dataset, base, 0)


def test_aggregation_against_hand_computed_values() -> None:
    folds = [cv.FoldResult(i, rmse, epoch, []) for i, (rmse, epoch) in enumerate([(0.90, 10), (0.86, 13), (0.88, 14)])]
    result = cv.CVResult(folds)
    assert result.mean == pytest.approx(0.88)
    # population std: sqrt(((0.02)^2 + (0.02)^2 + 0) / 3) = 0.0163299...
    assert result.std == pytest.approx(np.sqrt(0.0008 / 3))
    assert result.chosen_epochs == 12  # mean of 10, 13, 14 = 12.33 -> 12
    assert result.metrics() == {"cv_valid_rmse_mean": pytest.approx(0.88), "cv_valid_rmse_std": pytest.approx(np.sqrt(0.0008 / 3)), "cv_chosen_epochs": 12.0}


def test_tracked_cv_with_refit(workspace: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    from deeprec.cli import main

    with caplog.at_level(logging.INFO, logger="deeprec.train"):
        assert main(["cv", "--folds", "2", "--refit", "--ensemble", "--json", *[f"--{k}={v}" for k, v in TINY.items()]]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert progress and all(" valid_rmse nan " not in line for line in progress)
    assert any(" valid_rmse -  " in line for line in progress)  # the refit's lines: it has no validation ratings
    client = MlflowClient()
    parent = client.get_run(summary["run_id"])
    assert parent.data.params["folds"] == "2" and parent.data.params["arch"] == "6"
    folds = [m.value for m in client.get_metric_history(parent.info.run_id, "fold_valid_rmse")]
    assert len(folds) == 2 and [m.step for m in client.get_metric_history(parent.info.run_id, "fold_valid_rmse")] == [1, 2]
    assert parent.data.metrics["cv_valid_rmse_mean"] == pytest.approx(np.mean(folds))
    assert parent.data.metrics["cv_valid_rmse_std"] == pytest.approx(np.std(folds))
    assert np.isfinite(parent.data.metrics["test_rmse"])  # the refit's test metrics, on the parent too
    assert (parent.data.params["ensemble"], parent.data.params["refit"]) == ("true", "true")  # spelled as config booleans are
    assert summary["ensemble_test_rmse"] == pytest.approx(parent.data.metrics["ensemble_test_rmse"])
    assert "curves/folds.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "curves")}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert names == ["fold 1/2", "fold 2/2", "refit"]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train_rmse")
        assert [m.step for m in history] == [1, 2]  # per-epoch curves on every child
    refit = next(r for r in children if r.info.run_name == "refit")
    assert refit.data.params["epochs"] == str(int(parent.data.metrics["cv_chosen_epochs"]))
    assert refit.data.metrics["test_ratings"] > 0 and "valid_rmse" not in refit.data.metrics


def test_refit_trains_on_every_non_test_rating(workspace: Path) -> None:
    cfg = TrainConfig(**TINY).validate()
    dataset = datasets.load(datasets.get_spec("ml-1m"))
    outcome = cv.refit(cfg, epochs=3, dataset=dataset)
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]  # no early stopping without validation
    base, _ = preparation.fold_splits(cfg, dataset, 2)
    assert outcome.metrics["test_ratings"] == len(base.test)


def test_fold_ensemble_scores_the_mean_of_the_fold_models(workspace: Path) -> None:
    from deeprec import cv, datasets, experiment

    cfg = TrainConfig(**{**TINY, "epochs": 20, "lr": 0.02}).validate()  # trained enough to predict inside the scale
    dataset = datasets.load(datasets.get_spec(cfg.dataset))
    base, _ = preparation.fold_splits(cfg, dataset, 3)
    result = cv.cross_validate(cfg, folds=3, dataset=dataset, ensemble=True)
    scale = dataset.ratings.scale
    truth = dataset.ratings.values[base.test]
    per_fold = [f.test_predictions for f in result.folds]
    assert all(p.shape == truth.shape and p.min() >= scale[0] and p.max() <= scale[1] for p in per_fold)
    assert all(np.ptp(p) > 0.5 for p in per_fold)
    assert not np.allclose(per_fold[0], per_fold[1])  # different models, different predictions
    ensemble = cv.ensemble_metrics(result, dataset, base.test)
    by_hand = np.sqrt(np.mean((np.mean(per_fold, axis=0) - truth) ** 2))
    assert ensemble["ensemble_test_rmse"] == pytest.approx(by_hand, rel=1e-5)
    fold_rmses = [np.sqrt(np.mean((p - truth) ** 2)) for p in per_fold]
    assert ensemble["ensemble_test_rmse"] <= np.mean(fold_rmses) + 1e-9  # Minkowski: never worse than the folds' mean
    assert ensemble["ensemble_test_ratings"] == len(base.test)
    assert set(experiment.heldout_metrics(dataset.ratings, base.test, per_fold[0], scale)) == {k.removeprefix("ensemble_") for k in ensemble}


def test_cv_without_ensemble_keeps_no_predictions(workspace: Path) -> None:
    from deeprec import cv, datasets

    cfg = TrainConfig(**TINY).validate()
    result = cv.cross_validate(cfg, folds=2, dataset=datasets.load(datasets.get_spec(cfg.dataset)))
    assert all(f.test_predictions is None for f in result.folds)
    with pytest.raises(DeeprecError, match="without keeping their test predictions"):
        result.ensemble_predictions()

"""Per-group models: age x gender groups and k-means clusters, evaluated overall and per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import synthetic_ratings, write_ml1m
from deeprec import datasets, experiment, preparation, tracking
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.groups import user_groups
from deeprec.splits import make_split

TINY = dict(orientation="user", arch="6", epochs=2, batch_size=8, patience=0)


@pytest.fixture
def workspace(mlflow_store: Path) -> Path:
    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=42, n_items=25, per_user=(12, 20), seed=9))
    return mlflow_store


def test_age_gender_groups_follow_users_dat(workspace: Path) -> None:
    dataset = datasets.load(datasets.get_spec("ml-1m"))
    groups = user_groups("age-gender", dataset, make_split("holdout", dataset.ratings.users), seed=0)
    # conftest: user u is "FM"[u % 2] with age group (1, 18, 25, 35, 45, 50, 56)[u % 7]
    assert groups["M-18"].tolist() == [u for u in range(1, 43) if u % 2 == 1 and u % 7 == 1]
    assert sum(len(v) for v in groups.values()) == 42
    only = user_groups("age-gender:F-25", dataset, make_split("holdout", dataset.ratings.users), seed=0)
    assert list(only) == ["F-25"] and all(u % 2 == 0 and u % 7 == 2 for u in only["F-25"])
    with pytest.raises(ValueError, match="unknown age-gender group 'X-1'; groups: F-1, F-18"):  # TrainConfig says so before any data
        user_groups("age-gender:X-1", dataset, make_split("holdout", dataset.ratings.users), seed=0)


def test_kmeans_groups_partition_the_training_users(workspace: Path) -> None:
    dataset = datasets.load(datasets.get_spec("ml-1m"))
    split = make_split("holdout", dataset.ratings.users)
    groups = user_groups("kmeans:3", dataset, split, seed=0)
    assert list(groups) == ["cluster-1", "cluster-2", "cluster-3"]
    members = np.sort(np.concatenate(list(groups.values())))
    np.testing.assert_array_equal(members, np.unique(dataset.ratings.users[split.train]))
    again = user_groups("kmeans:3", dataset, split, seed=0)
    assert all(np.array_equal(groups[k], again[k]) for k in groups)  # seeded


def test_grouped_run_is_evaluated_overall_and_per_group(workspace: Path) -> None:
    cfg = TrainConfig(groups="kmeans:2", **TINY).validate()
    prepared = preparation.prepare(cfg)
    outcome = experiment.run(cfg, prepared)
    m = outcome.metrics
    assert m["groups_trained"] == 2
    assert m["test_ratings"] == len(prepared.split.test)  # every test rating, each by its group's model
    per_group = [m[f"group_cluster-{g}_test_ratings"] for g in (1, 2)]
    assert sum(per_group) == m["test_ratings"]
    # The overall squared error is the ratings-weighted mean of the groups'.
    overall = sum(m[f"group_cluster-{g}_test_rmse"] ** 2 * n for g, n in zip((1, 2), per_group)) / sum(per_group)
    assert m["test_rmse"] == pytest.approx(np.sqrt(overall), rel=1e-5)
    assert {h["group"] for h in outcome.history} == {"cluster-1", "cluster-2"}


def test_tracked_grouped_run_has_curves_per_group(workspace: Path) -> None:
    result = tracking.train_tracked(TrainConfig(groups="age-gender:M-18", **TINY).validate())
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["groups"] == "age-gender:M-18"
    assert [m.step for m in MlflowClient().get_metric_history(result.run_id, "group_M-18_valid_rmse")] == [1, 2]
    assert run.data.metrics["test_ratings"] == run.data.metrics["group_M-18_test_ratings"]
    assert run.data.tags["deeprec.models"].startswith("one model per group")


def test_cv_refuses_groups(workspace: Path) -> None:
    cfg = TrainConfig(groups="kmeans:2", **TINY).validate()
    with pytest.raises(DeeprecError, match="groups: cross-validation and tuning"):
        preparation.fold_splits(cfg, datasets.load(datasets.get_spec("ml-1m")), 2)


def test_groups_the_data_cannot_make_fail_before_a_run_starts(workspace: Path) -> None:
    cfg = TrainConfig(groups="kmeans:50", **TINY).validate()  # 42 users
    with pytest.raises(DeeprecError, match="groups: kmeans:50 needs at least 50 users, the training data has 42"):
        tracking.train_tracked(cfg)
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []
    prepared = preparation.prepare(TrainConfig(groups="kmeans:2", **TINY).validate())
    assert sorted(prepared.groups) == ["cluster-1", "cluster-2"]  # found once, used by the run

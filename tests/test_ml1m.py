"""The real ML-1M copy in ../shared/data (slow; skipped with the reason when it is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_ML1M
from deeprec import datasets, preparation
from deeprec.cli import main
from deeprec.matrix import build_matrices
from deeprec.splits import holdout_split

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_ML1M / "ratings.dat").is_file(), reason=f"ML-1M not found at {SHARED_ML1M}"),
]


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory) -> datasets.Dataset:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPREC_DATA_DIR", str(SHARED_ML1M.parent))
        return datasets.load(datasets.get_spec("ml-1m"))


def test_published_figures(ml1m: datasets.Dataset) -> None:
    ratings = ml1m.ratings
    assert len(ratings) == 1_000_209
    assert ratings.n_users == 6_040
    assert ratings.n_items == 3_706
    assert ratings.histogram() == {"1": 56_174, "2": 107_557, "3": 261_197, "4": 348_971, "5": 226_310}
    assert not ratings.has_timestamps  # this copy lost its timestamps


def test_holdout_sizes_and_side_information(ml1m: datasets.Dataset) -> None:
    split = holdout_split(ml1m.ratings.users)
    assert split.sizes() == {"train": 810_169, "valid": 90_019, "test": 100_021}
    assert split.notes == ()
    assert ml1m.user_features().shape == (6_040, 30)
    assert ml1m.item_features().shape == (3_883, 19)


def test_matrices_in_both_orientations(ml1m: datasets.Dataset) -> None:
    split = holdout_split(ml1m.ratings.users)
    by_user = build_matrices(ml1m.ratings, split, orientation="user", fill="row-mean")
    assert by_user.train.shape == (6_040, 3_678) and by_user.train.nnz == 810_169
    assert by_user.valid.nnz + by_user.dropped["valid"] == 90_019
    assert by_user.test.nnz + by_user.dropped["test"] == 100_021
    batch = by_user.train.batch(np.arange(256))
    assert batch.mask.sum() == by_user.train.values[:256].nnz
    by_item = build_matrices(ml1m.ratings, split, orientation="item", dense_cache=False)
    assert by_item.train.shape == (3_678, 6_040)
    assert (by_item.train.values != by_user.train.values.T).nnz == 0


def test_cli_info_json(capsys, monkeypatch) -> None:
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(SHARED_ML1M.parent))
    assert main(["data", "info", "--dataset", "ml-1m", "--split", "holdout", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["ratings"], info["users"], info["items"]) == (1_000_209, 6_040, 3_706)
    assert (info["split"]["train"], info["split"]["valid"], info["split"]["test"]) == (810_169, 90_019, 100_021)


def test_two_epochs_of_i_autorec_and_the_baselines(ml1m: datasets.Dataset, monkeypatch) -> None:
    from deeprec import experiment
    from deeprec.config import TrainConfig

    monkeypatch.setenv("DEEPREC_DATA_DIR", str(SHARED_ML1M.parent))
    cfg = TrainConfig(epochs=2, patience=0).validate()  # the default: I-AutoRec 500
    outcome = experiment.run(cfg, preparation.prepare(cfg))
    m = outcome.metrics
    assert m["test_ratings"] == 100_021 and m["test_unseen"] == 15  # every test rating is scored
    assert 0.85 < m["baseline_user_item_bias_rmse"] < 0.95
    assert m["baseline_user_item_bias_rmse"] < m["baseline_item_mean_rmse"] < m["baseline_global_mean_rmse"]
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    assert outcome.history[1]["valid_rmse"] < outcome.history[0]["valid_rmse"]
    assert m["test_rmse"] < 1.2 and 0 < m["ndcg_at_10"] < 1

"""Splits: seeded, deterministic, disjoint, covering, stratified by user, equal to scikit-learn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from conftest import synthetic_ratings, write_lines, write_ml100k
from deeprec import datasets
from deeprec.errors import DataFormatError, DeeprecError
from deeprec.splits import REPORT_SEED, canonical_split, describe_split, holdout_split, kfold_splits, make_split, stratified_holdout


@pytest.fixture
def users() -> np.ndarray:
    return synthetic_ratings(n_users=60, n_items=80, per_user=(20, 60), seed=3)[:, 0]


def test_holdout_is_deterministic_and_seeded(users: np.ndarray) -> None:
    a, b = holdout_split(users), holdout_split(users)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    other = holdout_split(users, seed=1)
    assert not np.array_equal(a.test, other.test)


def test_holdout_parts_are_disjoint_and_cover_everything(users: np.ndarray) -> None:
    split = holdout_split(users)
    everything = np.concatenate([split.train, split.valid, split.test])
    assert len(everything) == len(users)
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(users)))


def test_holdout_equals_scikit_learn_for_the_same_arguments(users: np.ndarray) -> None:
    index = np.arange(len(users))
    rest, test = train_test_split(index, test_size=0.1, stratify=users, random_state=REPORT_SEED)
    train, valid = train_test_split(rest, test_size=0.1, stratify=users[rest], random_state=REPORT_SEED)
    split = holdout_split(users)
    np.testing.assert_array_equal(split.test, np.sort(test))
    np.testing.assert_array_equal(split.valid, np.sort(valid))
    np.testing.assert_array_equal(split.train, np.sort(train))
    assert split.notes == ()


def test_holdout_is_stratified_by_user(users: np.ndarray) -> None:
    split = holdout_split(users)
    per_user = np.bincount(users)
    in_test = np.bincount(users[split.test], minlength=len(per_user))
    rated = per_user > 0
    # Stratification gives every user 10% of their ratings in test, up to rounding.
    assert np.all(np.abs(in_test[rated] - 0.1 * per_user[rated]) <= 1.0)
    assert np.all(in_test[rated] >= 1)


def test_users_too_small_to_stratify_are_pooled_or_kept_in_train() -> None:
    big = np.repeat(np.arange(20), 30)
    small = np.repeat(np.arange(100, 130), 4)  # 30 users with 4 < ceil(1/0.1) = 10 ratings each
    single = np.array([200, 201])  # one rating each
    users = np.concatenate([big, small, single])
    split = holdout_split(users)
    assert np.isin([len(users) - 2, len(users) - 1], split.train).all()  # single ratings stay in train
    small_rows = np.arange(len(big), len(big) + len(small))
    assert 0 < np.isin(small_rows, split.test).sum() < len(small_rows)  # the pooled group is split too
    assert any("30 user(s) with fewer than 10 ratings stratified together" in n for n in split.notes)
    assert any("2 user(s) with a single rating kept in training" in n for n in split.notes)
    assert len(split.train) + len(split.valid) + len(split.test) == len(users)
    in_test = np.bincount(users[split.test], minlength=20)[:20]
    assert np.all(in_test == 3)  # big users still exactly stratified: 10% of 30


def _users_without_training(users: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> set[int]:
    return set(users[held_out].tolist()) - set(users[train].tolist())


@pytest.mark.parametrize("seed", range(10))
def test_pooled_users_always_keep_a_rating_in_training(seed: int) -> None:
    """A 2-rating user in the pooled stratum could lose both ratings to test (or one to test and
    one to validation), and then be unknown to the model its held-out ratings are scored on."""
    users = np.concatenate([np.repeat(np.arange(50), 20), np.repeat(np.arange(100, 130), 2), np.repeat(np.arange(200, 220), 3)])
    split = holdout_split(users, seed=seed)
    assert not _users_without_training(users, split.train, np.concatenate([split.valid, split.test]))
    small = users >= 100
    assert np.isin(np.flatnonzero(small), split.test).sum() > 0  # the pooled users are still held out from
    assert len(split.train) + len(split.valid) + len(split.test) == len(users)
    again = holdout_split(users, seed=seed)  # the kept rating is drawn with the seed
    assert all(np.array_equal(getattr(again, part), getattr(split, part)) for part in ("train", "valid", "test"))


def test_a_held_out_share_over_half_keeps_a_rating_of_every_user() -> None:
    users = np.repeat(np.arange(20), 2)  # 60% of 2 ratings: less than one kept rating per user
    kept, held_out, notes = stratified_holdout(np.arange(len(users)), users, 0.6, seed=0)
    assert set(users[kept].tolist()) == set(range(20))
    assert len(kept) + len(held_out) == len(users) and len(held_out) == 12  # 60% of the 20 ratings not kept
    assert any("20 user(s) with fewer than 3 ratings" in n for n in notes)


def test_only_single_rating_users_is_a_clear_error() -> None:
    with pytest.raises(DeeprecError, match="too few ratings to hold out a 10% test share: 0 of the 4 it is taken from may be held out"):
        holdout_split(np.array([1, 2, 3, 4]))


def test_kfold_folds_partition_the_pool(users: np.ndarray) -> None:
    pool = holdout_split(users)
    non_test = np.concatenate([pool.train, pool.valid])
    folds = kfold_splits(users, k=5, seed=7, pool=non_test)
    assert len(folds) == 5
    valids = np.concatenate([valid for _, valid in folds])
    np.testing.assert_array_equal(np.sort(valids), np.sort(non_test))  # each rating validated once
    for train, valid in folds:
        assert not np.intersect1d(train, valid).size
        assert not np.intersect1d(train, pool.test).size  # the test split is never touched
        np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.sort(non_test))
    again = kfold_splits(users, k=5, seed=7, pool=non_test)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    np.testing.assert_array_equal(folds[-1][1], folds[4][1])
    with pytest.raises(IndexError):
        folds[5]


def test_kfold_keeps_the_folds_of_stratified_k_fold(users: np.ndarray) -> None:
    """The pairs are built from one fold number per rating; they are StratifiedKFold's own folds
    (runs before this change validated on the same ratings)."""
    from sklearn.model_selection import StratifiedKFold

    kept = users[np.bincount(users)[users] >= 3]  # every user is its own stratum for 3 folds
    folds = kfold_splits(kept, k=3, seed=4)
    expected = StratifiedKFold(n_splits=3, shuffle=True, random_state=4).split(np.zeros(len(kept)), kept)
    for (train, valid), (want_train, want_valid) in zip(folds, expected):
        np.testing.assert_array_equal(valid, want_valid)
        np.testing.assert_array_equal(train, want_train)


def test_kfold_is_stratified_and_keeps_small_users_in_train() -> None:
    users = np.concatenate([np.repeat(np.arange(10), 25), [50, 50]])  # user 50 has 2 < 5 ratings
    folds = kfold_splits(users, k=5, seed=0)
    for train, valid in folds:
        assert np.all(np.bincount(users[valid], minlength=10)[:10] == 5)
        assert {len(users) - 2, len(users) - 1} <= set(train.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_kfold_pooled_users_stay_in_every_folds_training(seed: int) -> None:
    users = np.concatenate([np.repeat(np.arange(50), 20), np.repeat(np.arange(100, 140), 3)])  # 40 users with 3 < 5
    folds = kfold_splits(users, k=5, seed=seed)
    validated_small = 0
    for train, valid in folds:
        assert not _users_without_training(users, train, valid)
        validated_small += int((users[valid] >= 100).sum())
    assert validated_small == 40 * 2  # all but each pooled user's kept rating are validated once


def test_kfold_rejects_fewer_than_two_folds(users: np.ndarray) -> None:
    with pytest.raises(DeeprecError, match="at least 2 folds"):
        kfold_splits(users, k=1, seed=0)


def test_canonical_u1_regenerates_mku_sh() -> None:
    rows = synthetic_ratings(n_users=1000, n_items=400, per_user=(100, 101), seed=5)
    users = rows[:, 0]
    assert len(users) == 100_000
    for fold in range(1, 6):
        split = canonical_split(users, f"u{fold}")
        # mku.sh: u$i.test = lines (i-1)*20000+1 .. i*20000 of u.data, u$i.base = the rest.
        np.testing.assert_array_equal(split.test, np.arange((fold - 1) * 20000, fold * 20000))
        base = np.sort(np.concatenate([split.train, split.valid]))
        np.testing.assert_array_equal(base, np.setdiff1d(np.arange(100_000), split.test))
        assert abs(len(split.valid) - 8000) <= 1


def test_canonical_folds_are_the_shipped_test_files_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupLens's u1.test holds about half of user 1's ratings: it was not made by mku.sh from
    the shipped u.data's order, so the file, not the regeneration, is the fold."""
    rows = synthetic_ratings(n_users=1000, n_items=400, per_user=(100, 101), seed=5)
    rows = rows[np.random.default_rng(1).permutation(len(rows))]  # u.data's order is not the folds'
    folder = write_ml100k(tmp_path / "ml-100k", rows)
    chosen = np.flatnonzero((rows[:, 0] < 400) & (rows[:, 1] % 2 == 0))  # not a block of lines
    write_lines(folder / "u1.test", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows[np.sort(chosen)][::-1]])
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path))
    dataset = datasets.load(datasets.get_spec("ml-100k"))
    split = dataset.split("u1")
    np.testing.assert_array_equal(split.test, np.sort(chosen))
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.valid])), np.setdiff1d(np.arange(len(rows)), chosen))
    assert split.notes[0] == "test: the ratings of the shipped u1.test"
    regenerated = dataset.split("u2")  # no u2.test beside u.data: mku.sh's lines
    np.testing.assert_array_equal(regenerated.test, np.arange(20_000, 40_000))
    assert "as mku.sh makes u2.test (no shipped u2.test found)" in regenerated.notes[0]
    u, i, r, t = rows[chosen[0]]
    write_lines(folder / "u1.test", [f"{u}\t{i}\t{r % 5 + 1}\t{t}"])  # a rating u.data does not hold
    with pytest.raises(DataFormatError, match=rf"u1\.test, line 1: the rating of item {i} by user {u} is not the one in u\.data"):
        dataset.split("u1")


def test_canonical_split_needs_ml100k_size(users: np.ndarray) -> None:
    with pytest.raises(DeeprecError, match="exactly 100,000 ratings"):
        make_split("u1", users)
    with pytest.raises(DeeprecError, match="unknown split"):
        make_split("u9", users)


def test_describe_split_counts_unseen_items() -> None:
    users = np.repeat(np.arange(20), 10)
    items = np.tile(np.arange(10), 20)
    items[5] = 99  # an item rated once
    split = holdout_split(users)
    info = describe_split(users, items, split)
    held_out = np.concatenate([split.valid, split.test])
    assert info["test_unseen_in_train"] + info["valid_unseen_in_train"] == int(5 in held_out)
    assert info["train"] + info["valid"] + info["test"] == 200

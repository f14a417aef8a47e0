"""Matrices: CSR per orientation, explicit mask, fills against hand-computed values, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines
from deeprec.errors import DeeprecError
from deeprec.matrix import build_matrices, make_fill, to_csr
from deeprec.ratings import Ratings, read_ratings
from deeprec.splits import Split

# 3 users x 3 items; user 30 has no rating of item 300. Hand-computed:
# user means 10: (5+3)/2 = 4, 20: (4+1+2)/3 = 7/3, 30: (2+0)/2 = 1; item means 100: 11/3, 200: 4/3, 300: 2;
# global mean 17/7.
TRAIN_LINES = ["10,100,5", "10,200,3", "20,100,4", "20,200,1", "20,300,2", "30,100,2", "30,200,0"]


@pytest.fixture
def tiny(tmp_path: Path) -> Ratings:
    # Held-out rows: (10, 300) is predictable; item 400 is never seen in training.
    return read_ratings(write_lines(tmp_path / "r.csv", TRAIN_LINES + ["10,300,4", "30,400,3"]), scale=(0, 5))


def tiny_split(extra_valid: bool = True) -> Split:
    return Split("manual", 0, np.arange(7), np.array([7]) if extra_valid else np.array([], dtype=np.int64), np.array([8]))


def test_user_major_values_and_explicit_zero(tiny: Ratings) -> None:
    m = build_matrices(tiny, tiny_split(), orientation="user")
    dense = m.train.values.toarray()
    np.testing.assert_array_equal(dense, [[5, 3, 0], [4, 1, 2], [2, 0, 0]])
    # The rating 0 of (30, 200) is observed: the mask comes from the data, not from value != 0.
    batch = m.train.batch(np.array([2]))
    np.testing.assert_array_equal(batch.mask, [[1, 1, 0]])
    assert m.train.nnz == 7


@pytest.mark.parametrize(
    ("fill", "expected_inputs"),
    [
        ("zero", [[5, 3, 0], [4, 1, 2], [2, 0, 0]]),
        ("3", [[5, 3, 3], [4, 1, 2], [2, 0, 3]]),
        ("row-mean", [[5, 3, 4], [4, 1, 2], [2, 0, 1]]),
        ("col-mean", [[5, 3, 2], [4, 1, 2], [2, 0, 2]]),
        ("global-mean", [[5, 3, 17 / 7], [4, 1, 2], [2, 0, 17 / 7]]),
    ],
)
def test_fills_against_hand_computed_values(tiny: Ratings, fill: str, expected_inputs: list) -> None:
    m = build_matrices(tiny, tiny_split(), orientation="user", fill=fill, dense_cache=False)
    batch = m.train.batch(np.arange(3))
    np.testing.assert_allclose(batch.inputs, expected_inputs, rtol=1e-6)
    # A fill never touches targets or the mask.
    np.testing.assert_array_equal(batch.targets, [[5, 3, 0], [4, 1, 2], [2, 0, 0]])
    np.testing.assert_array_equal(batch.mask, [[1, 1, 0], [1, 1, 1], [1, 1, 0]])


def test_row_mean_in_item_major_is_the_item_mean(tiny: Ratings) -> None:
    m = build_matrices(tiny, tiny_split(), orientation="item", fill="row-mean", dense_cache=False)
    inputs = m.train.batch(np.arange(3)).inputs  # rows: items 100, 200, 300; columns: users 10, 20, 30
    np.testing.assert_allclose(inputs, [[5, 4, 2], [3, 1, 0], [2, 2, 2]], rtol=1e-6)


def test_orientation_round_trip(tiny: Ratings) -> None:
    by_user = build_matrices(tiny, tiny_split(), orientation="user")
    by_item = build_matrices(tiny, tiny_split(), orientation="item")
    np.testing.assert_array_equal(by_item.train.values.toarray(), by_user.train.values.toarray().T)
    np.testing.assert_array_equal(by_item.train.observed().toarray(), by_user.train.observed().toarray().T)
    np.testing.assert_array_equal(by_item.valid.toarray(), by_user.valid.toarray().T)


def test_held_out_ratings_in_the_train_index_space(tiny: Ratings) -> None:
    m = build_matrices(tiny, tiny_split(), orientation="user")
    assert m.valid.shape == m.train.shape
    assert m.valid.toarray()[0, 2] == 4  # (10, 300)
    assert m.test.nnz == 0 and m.dropped == {"valid": 0, "test": 1}  # item 400 unseen in training
    assert m.users.ids.tolist() == [10, 20, 30] and m.items.ids.tolist() == [100, 200, 300]


def test_streamed_batches_equal_cached_batches(rows_ratings: Ratings) -> None:
    split = Split("all", 0, np.arange(len(rows_ratings)), np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    streamed = build_matrices(rows_ratings, split, fill="row-mean", dense_cache=False).train
    cached = build_matrices(rows_ratings, split, fill="row-mean", dense_cache=True).train
    seen = []
    for a, b in zip(streamed.batches(7, shuffle=True, seed=1), cached.batches(7, shuffle=True, seed=1)):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.inputs.dtype == np.float32
        seen.extend(a.rows.tolist())
    assert sorted(seen) == list(range(streamed.shape[0]))  # every row exactly once per epoch
    assert int(sum(streamed.batch(np.arange(streamed.shape[0])).mask.sum(axis=1))) == len(rows_ratings)


@pytest.fixture
def rows_ratings(tmp_path: Path, rows: np.ndarray) -> Ratings:
    return read_ratings(write_lines(tmp_path / "r.dat", [f"{u}::{i}::{r}::{t}" for u, i, r, t in rows]), scale=(1, 5))


def test_bad_names_are_clear_errors(tiny: Ratings) -> None:
    with pytest.raises(DeeprecError, match="unknown fill 'average'"):
        build_matrices(tiny, tiny_split(), fill="average")
    with pytest.raises(DeeprecError, match="unknown orientation 'users'"):
        build_matrices(tiny, tiny_split(), orientation="users")
    with pytest.raises(DeeprecError, match="batch size"):
        next(build_matrices(tiny, tiny_split()).train.batches(0))


def test_to_csr_rejects_duplicates() -> None:
    with pytest.raises(DeeprecError, match="duplicate"):
        to_csr(np.array([0, 0]), np.array([1, 1]), np.array([3.0, 4.0]), (2, 2))


def test_fill_means_ignore_empty_rows() -> None:
    values = to_csr(np.array([0, 0]), np.array([0, 1]), np.array([2.0, 4.0]), (2, 3))
    fill = make_fill(values, "row-mean")
    np.testing.assert_allclose(fill.per_row, [3.0, 3.0])  # empty row 1 falls back to the global mean
    np.testing.assert_allclose(make_fill(values, "col-mean").per_col, [2.0, 4.0, 3.0])

"""Training matrices: sparse CSR in user- or item-major orientation, an explicit observed mask,
and the fill value given to unobserved *input* entries.

- Orientation `user`: one row per user, columns are items (U-AutoRec); `item`: the transpose
  (I-AutoRec).
- The observed mask comes from the data (the CSR's stored entries), never from `value != 0`,
  so a rating of 0 on a 0..5 scale and a non-zero fill are both handled.
- Fills only change the model *input*; targets and mask are the ratings as observed.
  `zero`, a constant (`1`..`5`, or any number), `row-mean` (each row's mean: the report's
  "average" — a user's mean in user-major, an item's in item-major), `col-mean`, `global-mean`.
  Means are taken over the training ratings only; an empty row/column falls back to the global mean.
- Batches are densified one at a time, so ML-10M/20M never need the dense matrix; small data
  caches the dense input/target/mask once (`dense_cache`), which is faster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from deeprec.errors import DeeprecError
from deeprec.idmap import MISSING, IdMap
from deeprec.ratings import Ratings
from deeprec.splits import Split

log = logging.getLogger(__name__)

Orientation = Literal["user", "item"]
ORIENTATIONS: tuple[str, ...] = ("user", "item")
NAMED_FILLS: tuple[str, ...] = ("zero", "row-mean", "col-mean", "global-mean")
DENSE_CACHE_BYTES = 1 << 30  # cache input, target and mask densely while they fit in this budget


def check_fill(fill: str) -> str:
    """The fill name if valid: a named fill or a number (a constant default rating)."""
    if fill in NAMED_FILLS:
        return fill
    try:
        value = float(fill)
    except ValueError:
        raise DeeprecError(f"unknown fill {fill!r}; choose one of {', '.join(NAMED_FILLS)} or a number such as 3") from None
    if not math.isfinite(value):  # nan/inf inputs would only surface as a nan loss after loading and training
        raise DeeprecError(f"fill {fill!r} is not a finite number; choose one of {', '.join(NAMED_FILLS)} or a number such as 3")
    return fill


def check_orientation(orientation: str) -> Orientation:
    if orientation not in ORIENTATIONS:
        raise DeeprecError(f"unknown orientation {orientation!r}; choose user or item")
    return orientation  # type: ignore[return-value]


@dataclass(frozen=True)
class Fill:
    """The default input value of every unobserved cell: constant + row term + column term."""

    constant: float = 0.0
    per_row: np.ndarray | None = None
    per_col: np.ndarray | None = None

    def dense(self, rows: np.ndarray, n_cols: int) -> np.ndarray:
        block = np.full((len(rows), n_cols), self.constant, dtype=np.float32)
        if self.per_row is not None:
            block += self.per_row[rows, None]
        if self.per_col is not None:
            block += self.per_col[None, :]
        return block


def _axis_means(values: sp.csr_matrix, axis: int, fallback: float) -> np.ndarray:
    sums = np.asarray(values.sum(axis=axis)).ravel()
    counts = np.diff(values.indptr) if axis == 1 else np.bincount(values.indices, minlength=values.shape[1])
    means = np.full(len(sums), fallback, dtype=np.float64)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means.astype(np.float32)


def make_fill(values: sp.csr_matrix, fill: str) -> Fill:
    """Fill computed from the training ratings in `values` (same orientation as the input)."""
    check_fill(fill)
    global_mean = float(values.data.mean()) if values.nnz else 0.0
    if fill == "zero":
        return Fill()
    if fill == "global-mean":
        return Fill(constant=global_mean)
    if fill == "row-mean":
        return Fill(per_row=_axis_means(values, axis=1, fallback=global_mean))
    if fill == "col-mean":
        return Fill(per_col=_axis_means(values, axis=0, fallback=global_mean))
    return Fill(constant=float(fill))


@dataclass(frozen=True)
class Batch:
    """One dense batch: model input (observed ratings, fill elsewhere), targets and mask."""

    rows: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class RatingMatrix:
    """Observed ratings of one orientation as CSR plus the fill for unobserved inputs."""

    values: sp.csr_matrix  # float32; stored entries are exactly the observed ratings
    fill: Fill
    fill_name: str
    orientation: Orientation
    _dense: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def nnz(self) -> int:
        return self.values.nnz

    @property
    def dense_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(inputs, targets, mask) densified once, or None when batches are densified on demand."""
        return self._dense

    def observed(self) -> sp.csr_matrix:
        """The mask as CSR: 1 at every observed entry (the structure of `values`)."""
        return sp.csr_matrix((np.ones(self.values.nnz, dtype=np.float32), self.values.indices, self.values.indptr), shape=self.shape)

    def batch(self, rows: np.ndarray) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        if self._dense is not None:
            inputs, targets, mask = self._dense
            return Batch(rows, inputs[rows], targets[rows], mask[rows])
        return Batch(rows, *self._densify(rows))

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Only the model input of `rows` (what prediction needs): no targets or mask are built."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._dense is not None:
            return self._dense[0][rows]
        block = self.values[rows]
        return self._filled(rows, block, _observed_cells(block))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | None = None) -> Iterator[Batch]:
        """All rows in batches; shuffled with `seed` when asked."""
        if batch_size < 1:
            raise DeeprecError(f"batch size must be at least 1, got {batch_size}")
        order = np.arange(self.shape[0])
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])

    def _densify(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = self.values[rows]
        cells = _observed_cells(block)
        targets = block.toarray().astype(np.float32)
        mask = np.zeros(targets.shape, dtype=np.float32)
        mask[cells] = 1.0
        return self._filled(rows, block, cells), targets, mask

    def _filled(self, rows: np.ndarray, block: sp.csr_matrix, cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The input of `rows`: the fill everywhere, then the observed ratings in their cells."""
        inputs = self.fill.dense(rows, self.shape[1])
        inputs[cells] = block.data
        return inputs

    def with_dense_cache(self) -> RatingMatrix:
        """The same matrix with input/target/mask densified once (for data that fits in memory)."""
        all_rows = np.arange(self.shape[0])
        return RatingMatrix(self.values, self.fill, self.fill_name, self.orientation, self._densify(all_rows))


def _observed_cells(block: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row in block, column) of every stored entry of a CSR block, for dense indexing."""
    return np.repeat(np.arange(block.shape[0]), np.diff(block.indptr)), block.indices


def to_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR with one stored entry per (row, col), zeros included (they are observed ratings)."""
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    if len(rows) > 1 and ((np.diff(rows) == 0) & (np.diff(cols) == 0)).any():
        raise DeeprecError("duplicate (row, column) entries: each rating must be unique")
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    # Built from indptr/indices directly: scipy's COO route would be fine too, but this keeps
    # explicit zeros by construction and sorts once.
    return sp.csr_matrix((values.astype(np.float32), cols.astype(np.int32), indptr), shape=shape)


@dataclass(frozen=True)
class SplitMatrices:
    """Train/valid/test matrices in one orientation and one index space (fitted on train)."""

    train: RatingMatrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    users: IdMap
    items: IdMap
    orientation: Orientation
    dropped: dict[str, int]  # held-out ratings whose user or item never occurs in training


def build_matrices(
    ratings: Ratings, split: Split, orientation: str = "user", fill: str = "zero", dense_cache: bool | None = None
) -> SplitMatrices:
    """Fit the id maps on the training ratings and build every matrix of the split.

    Held-out ratings of users or items unseen in training cannot be predicted from the training
    matrix; they are left out of `valid`/`test` and counted in `dropped` (see idmap's policy).
    `dense_cache=None` caches the dense training matrix when it fits in DENSE_CACHE_BYTES.
    """
    orientation = check_orientation(orientation)
    check_fill(fill)
    users = IdMap.fit(ratings.users[split.train])
    items = IdMap.fit(ratings.items[split.train])
    shape_ui = (len(users), len(items))

    def oriented(rows: np.ndarray) -> tuple[sp.csr_matrix, int]:
        u = users.transform(ratings.users[rows], unknown="missing")
        i = items.transform(ratings.items[rows], unknown="missing")
        known = (u != MISSING) & (i != MISSING)
        u, i, v = u[known], i[known], ratings.values[rows][known]
        if orientation == "user":
            return to_csr(u, i, v, shape_ui), int((~known).sum())
        return to_csr(i, u, v, shape_ui[::-1]), int((~known).sum())

    train_values, _ = oriented(split.train)
    valid, dropped_valid = oriented(split.valid)
    test, dropped_test = oriented(split.test)
    train = RatingMatrix(train_values, make_fill(train_values, fill), fill, orientation)
    if dense_cache or (dense_cache is None and 3 * 4 * train_values.shape[0] * train_values.shape[1] <= DENSE_CACHE_BYTES):
        train = train.with_dense_cache()
    if dropped_valid or dropped_test:
        log.info("held-out ratings of users/items unseen in training, left out of the matrices: valid %d, test %d "
                 "(the test metrics score those with the bias baseline)", dropped_valid, dropped_test)
    return SplitMatrices(train, valid, test, users, items, orientation, {"valid": dropped_valid, "test": dropped_test})

"""Evaluation metrics and null-model baselines, in numpy over observed (held-out) entries only.

Semantics (state these in every report):
- `rmse` / `mae` are per rating: one global mean over all held-out ratings, so a heavy user
  weighs more. This is `test_rmse`. Predictions are clipped to the rating scale first
  (`evaluate_ratings` does it).
- `rmse_user_avg` is the original report's variant: RMSE of each user over that user's held-out
  ratings, then the plain mean over users (every user weighs the same). Logged under its own name,
  never as `rmse`.
- Unknown users/items: held-out ratings of users or items unseen in training cannot be predicted
  from the training matrix. The per-epoch validation RMSE leaves them out (they are not in the
  matrices, see matrix.build_matrices); `test_rmse` covers every test rating, those predicted by
  the user + item bias baseline (experiment.py). A baseline given the index MISSING (-1), or an
  index that had no training rating, predicts the global training mean (a missing bias is 0).
- Ranking@k: relevant items of a user are the test items rated >= threshold; items rated in
  train are never candidates; users without a relevant test item are skipped; precision, recall
  and NDCG are averaged over the evaluated users (see `ranking_at_k`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from deeprec.errors import DeeprecError
from deeprec.idmap import MISSING

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("global_mean", "user_mean", "item_mean", "user_item_bias")


class MetricInputError(DeeprecError, ValueError):
    """Input a metric cannot be computed on. A ValueError for callers, and a DeeprecError so the
    CLI shows it as one line (an unknown baseline name usually comes from a config)."""


def clip(pred: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Predictions clipped to the rating scale (low, high)."""
    low, high = scale
    if low > high:
        raise MetricInputError(f"rating scale must be (low, high) with low <= high, got {scale}")
    return np.clip(np.asarray(pred, dtype=np.float64), low, high)


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise MetricInputError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise MetricInputError("no ratings to evaluate: y_true and y_pred are empty")
    return t, p


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error over all ratings (per rating, global)."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error over all ratings (per rating, global)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse_user_avg(users: ArrayLike, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The report's metric: each user's RMSE over their held-out ratings, averaged over users."""
    t, p = _pair(y_true, y_pred)
    u = np.asarray(users).ravel()
    if u.shape != t.shape:
        raise MetricInputError(f"users and y_true differ in length: {u.size} vs {t.size}")
    # np.unique rather than bincount on raw indices: works for any user labels, and only users
    # that have held-out ratings take part in the average.
    _, group = np.unique(u, return_inverse=True)
    sse = np.bincount(group, weights=(t - p) ** 2)
    counts = np.bincount(group)
    return float(np.mean(np.sqrt(sse / counts)))


def evaluate_ratings(users: ArrayLike, y_true: ArrayLike, y_pred: ArrayLike, scale: tuple[float, float]) -> dict[str, float]:
    """rmse, mae and rmse_user_avg of predictions clipped to the rating scale."""
    p = clip(np.asarray(y_pred), scale)
    return {"rmse": rmse(y_true, p), "mae": mae(y_true, p), "rmse_user_avg": rmse_user_avg(users, y_true, p)}


# ---------------------------------------------------------------------------------------------
# Baselines: every kind is "global mean + user offset + item offset", so one predict serves all.


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare
class Baseline:
    """A fitted null model: prediction = global_mean + user_bias[u] + item_bias[i]."""

    kind: str
    global_mean: float
    user_bias: np.ndarray  # (n_users,); 0 for users without training ratings
    item_bias: np.ndarray  # (n_items,); 0 for items without training ratings

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings; an index of MISSING (-1) gets no offset (falls back to the mean)."""
        u = np.asarray(users, dtype=np.int64).ravel()
        i = np.asarray(items, dtype=np.int64).ravel()
        if u.shape != i.shape:
            raise MetricInputError(f"users and items differ in length: {u.size} vs {i.size}")
        return self.global_mean + _offsets(self.user_bias, u, "user") + _offsets(self.item_bias, i, "item")


def _offsets(bias: np.ndarray, index: np.ndarray, name: str) -> np.ndarray:
    # Only MISSING means "unseen"; any other out-of-range index is a bug upstream, not a cold start.
    bad = (index < MISSING) | (index >= len(bias))
    if bad.any():
        raise MetricInputError(f"{name} index out of range 0..{len(bias) - 1} (or {MISSING} for unseen): {index[bad][:5]}")
    known = index != MISSING
    out = np.zeros(index.shape, dtype=np.float64)
    out[known] = bias[index[known]]
    return out


def _mean_offsets(index: np.ndarray, residual: np.ndarray, n: int, reg: float) -> np.ndarray:
    """sum(residual) / (reg + count) per index; 0 where the denominator is 0 (no ratings, reg 0)."""
    sums = np.bincount(index, weights=residual, minlength=n)
    denom = reg + np.bincount(index, minlength=n)
    out = np.zeros(n, dtype=np.float64)
    np.divide(sums, denom, out=out, where=denom > 0)
    return out


def fit_baseline(
    kind: str,
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    reg: float = 10.0,
    iterations: int = 10,
) -> Baseline:
    """Fit a baseline on training ratings (indices 0..n-1). `reg` and `iterations` only apply to
    `user_item_bias`; the mean baselines are plain (unregularized) means."""
    if kind not in BASELINES:
        raise MetricInputError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
    u = np.asarray(users, dtype=np.int64).ravel()
    i = np.asarray(items, dtype=np.int64).ravel()
    r = np.asarray(values, dtype=np.float64).ravel()
    if not (u.shape == i.shape == r.shape):
        raise MetricInputError(f"users, items and values differ in length: {u.size}, {i.size}, {r.size}")
    if r.size == 0:
        raise MetricInputError("cannot fit a baseline on no ratings")
    if u.min() < 0 or u.max() >= n_users or i.min() < 0 or i.max() >= n_items:
        raise MetricInputError(f"training indices must lie in 0..n-1 (n_users={n_users}, n_items={n_items})")
    if reg < 0 or iterations < 0:
        raise MetricInputError(f"reg and iterations must be >= 0, got reg={reg}, iterations={iterations}")

    mu = float(r.mean())
    b_u = np.zeros(n_users, dtype=np.float64)
    b_i = np.zeros(n_items, dtype=np.float64)
    if kind == "user_mean":
        b_u = _mean_offsets(u, r - mu, n_users, 0.0)
    elif kind == "item_mean":
        b_i = _mean_offsets(i, r - mu, n_items, 0.0)
    elif kind == "user_item_bias":
        # Alternating least squares, items first (Koren's baseline predictor); reg shrinks the bias
        # of a user/item with few ratings towards 0, i.e. its prediction towards the mean.
        for _ in range(iterations):
            b_i = _mean_offsets(i, r - mu - b_u[u], n_items, reg)
            b_u = _mean_offsets(u, r - mu - b_i[i], n_users, reg)
    return Baseline(kind, mu, b_u, b_i)


# ---------------------------------------------------------------------------------------------
# Ranking


def ranking_at_k(
    score_rows: Callable[[np.ndarray], np.ndarray],
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int = 10,
    threshold: float = 4.0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Top-k precision, recall and NDCG over users, scoring `batch_size` user rows at a time.

    `train`/`test` are user-major CSR in one index space; `score_rows(rows)` returns dense scores
    (len(rows), n_items). Relevant = test rating >= threshold and not rated in train (an item
    rated in train is never a candidate, so it could never be a hit). precision = hits / k,
    recall = hits / n_relevant, NDCG with binary gains, 1/log2(rank + 1) discount and the ideal
    DCG of min(k, n_relevant) hits. Users with no relevant item are skipped; with none at all the
    metrics are NaN. Ties at the k-th score are broken arbitrarily (argpartition).
    """
    if k < 1 or batch_size < 1:
        raise MetricInputError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    if train.shape != test.shape:
        raise MetricInputError(f"train and test differ in shape: {train.shape} vs {test.shape}")
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    n_users, n_items = test.shape
    k_top = min(k, n_items)
    discount = 1.0 / np.log2(np.arange(2, k_top + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m] = DCG of m hits at the top

    # Only users with a relevant test item are scored, so the model is not run for nothing.
    relevant = test.copy()
    relevant.data = (relevant.data >= threshold).astype(np.int8)
    relevant.eliminate_zeros()
    candidates = np.flatnonzero(np.diff(relevant.indptr) > 0)

    sums = np.zeros(3)  # precision, recall, ndcg summed over evaluated users
    n_evaluated = 0
    for start in range(0, len(candidates), batch_size):
        rows = candidates[start : start + batch_size]
        # A copy: the caller's scores may be a cached array that must not get -inf written into it.
        scores = np.array(score_rows(rows), dtype=np.float64)
        if scores.shape != (len(rows), n_items):
            raise MetricInputError(f"score_rows returned shape {scores.shape}, expected {(len(rows), n_items)}")
        seen = train[rows]
        seen_rows = np.repeat(np.arange(len(rows)), np.diff(seen.indptr))
        scores[seen_rows, seen.indices] = -np.inf
        rel = relevant[rows].toarray().astype(bool)
        rel[seen_rows, seen.indices] = False
        n_rel = rel.sum(axis=1)
        keep = n_rel > 0
        if not keep.all():
            scores, rel, n_rel = scores[keep], rel[keep], n_rel[keep]

        # argpartition finds the top k in O(n_items), then only those k are sorted.
        top = np.argpartition(-scores, k_top - 1, axis=1)[:, :k_top]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.take_along_axis(rel, top, axis=1)

        n_hits = hits.sum(axis=1)
        dcg = hits @ discount
        sums += [
            (n_hits / k).sum(),
            (n_hits / n_rel).sum(),
            (dcg / ideal[np.minimum(n_rel, k_top)]).sum(),
        ]
        n_evaluated += len(n_rel)

    if n_evaluated == 0:
        log.warning("ranking@%d: no user has a test rating >= %s outside train; metrics are NaN", k, threshold)
        means = np.full(3, np.nan)
    else:
        means = sums / n_evaluated
    return {
        f"precision_at_{k}": float(means[0]),
        f"recall_at_{k}": float(means[1]),
        f"ndcg_at_{k}": float(means[2]),
        "ranking_users": float(n_evaluated),
    }

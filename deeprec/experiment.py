"""One experiment without tracking: load → split → matrices → fit → evaluate on the test split once.

Evaluation semantics (stated in every report):
- input at evaluation is the training matrix; targets are the held-out ratings;
- `test_rmse` / `test_mae` are per rating over *all* test ratings, predictions clipped to the
  rating scale; a test rating whose user or item never occurs in training cannot be predicted
  by the model and gets the user+item bias baseline's prediction (counted in `test_unseen`);
- `test_rmse_user_avg` is the original report's metric: RMSE per user, averaged over users;
- baselines (global/user/item mean, user+item bias) are fitted on the same training ratings and
  scored on the same test ratings;
- ranking@10: test ratings >= 4 are relevant, items rated in training are never recommended,
  users without a relevant test item are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from deeprec import datasets, features, metrics
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.idmap import MISSING
from deeprec.matrix import build_matrices, to_csr
from deeprec.splits import Split, make_split
from deeprec.train import TrainingData, compiled_forward, fit, predict_rows

log = logging.getLogger(__name__)

RANKING_K = 10
RELEVANT_RATING = 4.0
DENSE_RANKING_BYTES = 2 << 30  # item-major ranking needs the full prediction matrix; skip above this


@dataclass(frozen=True)
class Prepared:
    dataset: datasets.Dataset
    split: Split
    data: TrainingData


def prepare(cfg: TrainConfig, dataset: datasets.Dataset | None = None, split: Split | None = None) -> Prepared:
    """Load, split and build the matrices a config asks for (the expensive part).

    A loaded `dataset` and a ready `split` (a CV fold, a refit on all non-test data) can be given
    so that several trainings share one load.
    """
    if dataset is None:
        dataset = datasets.load(datasets.get_spec(cfg.dataset))
    if split is None:
        split = make_split(cfg.split, dataset.ratings.users)
    matrices = build_matrices(dataset.ratings, split, orientation=cfg.orientation, fill=cfg.fill)
    side = None
    if cfg.side_info != "none":
        table = dataset.user_features() if cfg.side_info == "user" else dataset.item_features()
        side = _scaled(features.align(table, matrices.users if cfg.side_info == "user" else matrices.items))
    return Prepared(dataset, split, TrainingData(matrices=matrices, scale=dataset.ratings.scale, side=side))


def _scaled(table: np.ndarray) -> np.ndarray:
    """Min-max scale each feature column to [0, 1] (release years would otherwise dwarf the ratings)."""
    low, high = table.min(axis=0), table.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((table - low) / span).astype(np.float32)


def index_pairs(prepared: Prepared, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, rating) of the ratings at `rows`; unseen ids are MISSING."""
    ratings, m = prepared.dataset.ratings, prepared.data.matrices
    return (
        m.users.transform(ratings.users[rows], unknown="missing"),
        m.items.transform(ratings.items[rows], unknown="missing"),
        ratings.values[rows],
    )


def predict_pairs(model: keras.Model, data: TrainingData, users: np.ndarray, items: np.ndarray, batch_rows: int = 1024) -> np.ndarray:
    """Model predictions (unclipped) for known (user, item) index pairs, grouped by matrix row."""
    rows, cols = (users, items) if data.matrices.orientation == "user" else (items, users)
    forward = compiled_forward(model, data.n_inputs)
    out = np.empty(len(rows), dtype=np.float32)
    unique_rows = np.unique(rows)
    for start in range(0, len(unique_rows), batch_rows):
        block_rows = unique_rows[start : start + batch_rows]
        block = predict_rows(model, data, block_rows, forward)
        selected = np.isin(rows, block_rows)
        position = np.searchsorted(block_rows, rows[selected])
        out[selected] = block[position, cols[selected]]
    return out


def evaluate(model: keras.Model, prepared: Prepared) -> dict[str, float]:
    """Test metrics, baselines and ranking, computed once on the test split (see module docstring)."""
    data, scale = prepared.data, prepared.data.scale
    train_u, train_i, train_r = index_pairs(prepared, prepared.split.train)
    users, items, truth = index_pairs(prepared, prepared.split.test)
    if len(truth) == 0:
        raise DeeprecError(f"split {prepared.split.name} has no test ratings to evaluate")
    n_users, n_items = len(data.matrices.users), len(data.matrices.items)
    baselines = {kind: metrics.fit_baseline(kind, train_u, train_i, train_r, n_users, n_items) for kind in metrics.BASELINES}
    known = (users != MISSING) & (items != MISSING)
    predictions = baselines["user_item_bias"].predict(users, items).astype(np.float32)
    predictions[known] = predict_pairs(model, data, users[known], items[known])
    # Per-user averaging needs a user label for unseen users too: give each its own negative label.
    user_labels = np.where(users != MISSING, users, -1 - pd.factorize(prepared.dataset.ratings.users[prepared.split.test])[0])
    result = {f"test_{k}": v for k, v in metrics.evaluate_ratings(user_labels, truth, predictions, scale).items()}
    result["test_unseen"] = float((~known).sum())
    result["test_ratings"] = float(len(truth))
    for kind, baseline in baselines.items():
        guess = metrics.clip(baseline.predict(users, items), scale)
        result[f"baseline_{kind}_rmse"] = metrics.rmse(truth, guess)
    result.update(_ranking(model, prepared, train_u, train_i, train_r, users, items, truth, known))
    return result


def _ranking(model, prepared: Prepared, train_u, train_i, train_r, users, items, truth, known) -> dict[str, float]:
    data = prepared.data
    n_users, n_items = len(data.matrices.users), len(data.matrices.items)
    train = to_csr(train_u, train_i, train_r, (n_users, n_items))
    test = to_csr(users[known], items[known], truth[known], (n_users, n_items))
    if data.matrices.orientation == "user":
        forward = compiled_forward(model, data.n_inputs)
        score_rows: Callable[[np.ndarray], np.ndarray] = lambda rows: predict_rows(model, data, rows, forward)  # noqa: E731
    else:
        if n_users * n_items * 4 > DENSE_RANKING_BYTES:
            log.warning("ranking skipped: item-major ranking needs the %d x %d prediction matrix in memory", n_users, n_items)
            return {}
        forward = compiled_forward(model, data.n_inputs)
        full = np.concatenate([predict_rows(model, data, np.arange(s, min(s + 1024, n_items)), forward) for s in range(0, n_items, 1024)]).T
        score_rows = lambda rows: full[rows]  # noqa: E731
    ranking = metrics.ranking_at_k(score_rows, train, test, k=RANKING_K, threshold=RELEVANT_RATING)
    return {k: float(v) for k, v in ranking.items()}


@dataclass(frozen=True)
class Outcome:
    model: keras.Model
    history: list[dict]
    metrics: dict[str, float]


def run(cfg: TrainConfig, prepared: Prepared, on_epoch: Callable[[dict], None] | None = None) -> Outcome:
    """Train on `prepared` and evaluate on its test split once."""
    model, history = fit(cfg, prepared.data, on_epoch=on_epoch)
    results = evaluate(model, prepared)
    valid = [h["valid_rmse"] for h in history if "valid_rmse" in h]
    if valid:
        best = int(np.argmin(valid))
        results["best_valid_rmse"] = float(valid[best])
        results["best_epoch"] = float(history[best]["epoch"])
    results["epochs_run"] = float(len(history))
    results["seconds_per_epoch"] = float(np.median([h["seconds"] for h in history]))
    return Outcome(model, history, results)

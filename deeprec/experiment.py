"""One experiment without tracking: load → split → matrices → fit → evaluate on the test split once.

Evaluation semantics (stated in every report):
- input at evaluation is the training matrix; targets are the held-out ratings;
- `test_rmse` / `test_mae` are per rating over *all* test ratings, predictions clipped to the
  rating scale; a test rating whose user or item never occurs in training cannot be predicted
  by the model and gets the user+item bias baseline's prediction (counted in `test_unseen`);
- `test_rmse_user_avg` is the original report's metric: RMSE per user, averaged over users;
- baselines (global/user/item mean, user+item bias) are fitted on the same training ratings and
  scored on the same test ratings;
- ranking@10: test ratings in the top quarter of the scale are relevant (>= 4 on 1..5, as is
  usual for MovieLens; >= 7.75 on 1..10), items rated in training are never recommended, users
  without a relevant test item are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from deeprec import metrics
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.idmap import MISSING
from deeprec.matrix import to_csr
from deeprec.ratings import Ratings
from deeprec.preparation import Prepared, TrainingData, prepare
from deeprec.splits import Split
from deeprec.train import compiled_forward, fit, predict_rows

log = logging.getLogger(__name__)

RANKING_K = 10
RELEVANT_SHARE = 0.75  # of the way up the rating scale: 4 on MovieLens' 1..5 (and its 0.5..5 half stars)


def relevance_threshold(scale: tuple[float, float]) -> float:
    """The lowest relevant rating: a fixed 4 counted almost every rating of a 1..10 scale."""
    low, high = scale
    return low + RELEVANT_SHARE * (high - low)
DENSE_RANKING_BYTES = 2 << 30  # item-major ranking needs the full prediction matrix; skip above this


def index_pairs(prepared: Prepared, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, rating) of the ratings at `rows`; unseen ids are MISSING."""
    ratings, m = prepared.dataset.ratings, prepared.data.matrices
    return (
        m.users.transform(ratings.users[rows], unknown="missing"),
        m.items.transform(ratings.items[rows], unknown="missing"),
        ratings.values[rows],
    )


def predict_pairs(
    model: keras.Model, data: TrainingData, users: np.ndarray, items: np.ndarray, forward: Callable | None = None, batch_rows: int = 1024
) -> np.ndarray:
    """Model predictions (unclipped) for known (user, item) index pairs, grouped by matrix row."""
    rows, cols = (users, items) if data.matrices.orientation == "user" else (items, users)
    forward = forward or compiled_forward(model, data.n_inputs)
    out = np.empty(len(rows), dtype=np.float32)
    unique_rows = np.unique(rows)
    for start in range(0, len(unique_rows), batch_rows):
        block_rows = unique_rows[start : start + batch_rows]
        block = predict_rows(model, data, block_rows, forward)
        selected = np.isin(rows, block_rows)
        position = np.searchsorted(block_rows, rows[selected])
        out[selected] = block[position, cols[selected]]
    return out


def bias_fallback(prepared: Prepared) -> metrics.Baseline:
    """The user+item bias baseline fitted on `prepared`'s training ratings: the prediction for
    held-out ratings whose user or item the model never saw."""
    train_u, train_i, train_r = index_pairs(prepared, prepared.split.train)
    m = prepared.data.matrices
    return metrics.fit_baseline("user_item_bias", train_u, train_i, train_r, len(m.users), len(m.items))


def test_predictions(
    model: keras.Model, prepared: Prepared, fallback: metrics.Baseline, forward: Callable | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unclipped predictions for every rating of the test split (in its order) and which of them
    the model made: a rating whose user or item is unseen in training gets `fallback`'s."""
    users, items, _ = index_pairs(prepared, prepared.split.test)
    known = (users != MISSING) & (items != MISSING)
    predictions = fallback.predict(users, items).astype(np.float32)
    predictions[known] = predict_pairs(model, prepared.data, users[known], items[known], forward)
    return predictions, known


def heldout_metrics(ratings: Ratings, rows: np.ndarray, predictions: np.ndarray, scale: tuple[float, float]) -> dict[str, float]:
    """test_rmse, test_mae, test_rmse_user_avg (per raw user) and test_ratings for ratings `rows`."""
    user_labels = pd.factorize(ratings.users[rows])[0]
    result = {f"test_{k}": v for k, v in metrics.evaluate_ratings(user_labels, ratings.values[rows], predictions, scale).items()}
    result["test_ratings"] = float(len(rows))
    return result


def evaluate(model: keras.Model, prepared: Prepared) -> dict[str, float]:
    """Test metrics, baselines and ranking, computed once on the test split (see module docstring)."""
    data, scale = prepared.data, prepared.data.scale
    train_u, train_i, train_r = index_pairs(prepared, prepared.split.train)
    users, items, truth = index_pairs(prepared, prepared.split.test)
    if len(truth) == 0:
        raise DeeprecError(f"split {prepared.split.name} has no test ratings to evaluate")
    n_users, n_items = len(data.matrices.users), len(data.matrices.items)
    baselines = {kind: metrics.fit_baseline(kind, train_u, train_i, train_r, n_users, n_items) for kind in metrics.BASELINES}
    forward = compiled_forward(model, data.n_inputs)  # traced once, for the test ratings and the ranking
    predictions, known = test_predictions(model, prepared, baselines["user_item_bias"], forward)
    result = heldout_metrics(prepared.dataset.ratings, prepared.split.test, predictions, prepared.data.scale)
    result["test_unseen"] = float((~known).sum())
    for kind, baseline in baselines.items():
        guess = metrics.clip(baseline.predict(users, items), scale)
        result[f"baseline_{kind}_rmse"] = metrics.rmse(truth, guess)
    result.update(_ranking(model, prepared, forward, train_u, train_i, train_r, users, items, truth, known))
    return result


def _ranking(model, prepared: Prepared, forward: Callable, train_u, train_i, train_r, users, items, truth, known) -> dict[str, float]:
    data = prepared.data
    n_users, n_items = len(data.matrices.users), len(data.matrices.items)
    train = to_csr(train_u, train_i, train_r, (n_users, n_items))
    test = to_csr(users[known], items[known], truth[known], (n_users, n_items))
    if data.matrices.orientation == "user":
        score_rows: Callable[[np.ndarray], np.ndarray] = lambda rows: predict_rows(model, data, rows, forward)  # noqa: E731
    else:
        if n_users * n_items * 4 > DENSE_RANKING_BYTES:
            log.warning("ranking skipped: item-major ranking needs the %d x %d prediction matrix in memory", n_users, n_items)
            return {}
        full = np.concatenate([predict_rows(model, data, np.arange(s, min(s + 1024, n_items)), forward) for s in range(0, n_items, 1024)]).T
        score_rows = lambda rows: full[rows]  # noqa: E731
    ranking = metrics.ranking_at_k(score_rows, train, test, k=RANKING_K, threshold=relevance_threshold(data.scale))
    return {k: float(v) for k, v in ranking.items()}


@dataclass(frozen=True)
class Outcome:
    model: keras.Model
    history: list[dict]
    metrics: dict[str, float]


def run(cfg: TrainConfig, prepared: Prepared, on_epoch: Callable[[dict], None] | None = None) -> Outcome:
    """Train on `prepared` and evaluate on its test split once (one model per group with `groups`)."""
    if cfg.groups != "none":
        return run_grouped(cfg, prepared, on_epoch)
    model, history = fit(cfg, prepared.data, on_epoch=on_epoch)
    results = evaluate(model, prepared)
    results.update(_history_summary(history))
    return Outcome(model, history, results)


def _history_summary(history: list[dict]) -> dict[str, float]:
    results = {}
    valid = [h["valid_rmse"] for h in history if "valid_rmse" in h]
    if valid:
        best = int(np.argmin(valid))
        results["best_valid_rmse"] = float(valid[best])
        results["best_epoch"] = float(history[best]["epoch"])
    results["epochs_run"] = float(len(history))
    results["seconds_per_epoch"] = float(np.median([h["seconds"] for h in history]))
    return results


def run_grouped(cfg: TrainConfig, prepared: Prepared, on_epoch: Callable[[dict], None] | None = None) -> Outcome:
    """One model per user group, each trained and validated on its group's ratings only.

    Overall metrics cover the test ratings of every trained group's users (for `age-gender:LABEL`,
    that group's only); per-group metrics are `group_<label>_test_rmse` etc. Epoch records carry
    a "group" key. Ranking is not computed for grouped runs; baselines are fitted on all training
    ratings. The returned model is the last group's (grouped runs log no model).
    """
    from deeprec.groups import user_groups

    dataset, split = prepared.dataset, prepared.split
    ratings = dataset.ratings
    groups = prepared.groups if prepared.groups is not None else user_groups(cfg.groups, dataset, split, cfg.seed)
    rows, predictions, history, results, model = [], [], [], {}, None
    for label, members in groups.items():
        member = np.isin(ratings.users, members)
        sub = Split(f"{split.name}-{label}", split.seed, split.train[member[split.train]], split.valid[member[split.valid]], split.test[member[split.test]])
        if len(sub.train) == 0 or len(sub.test) == 0:
            log.warning("group %s has no training or no test ratings: skipped", label)
            continue
        log.info("group %s: %d users, %d training ratings", label, len(members), len(sub.train))
        group_prepared = prepare(cfg, dataset=dataset, split=sub)
        tagged = None if on_epoch is None else (lambda record, label=label: on_epoch({**record, "group": label}))
        model, group_history = fit(cfg, group_prepared.data, on_epoch=tagged)
        history.extend({**h, "group": label} for h in group_history)
        group_predictions, _ = test_predictions(model, group_prepared, bias_fallback(group_prepared))
        rows.append(sub.test)
        predictions.append(group_predictions)
        group_metrics = heldout_metrics(ratings, sub.test, group_predictions, prepared.data.scale)
        group_metrics["users"] = float(len(members))
        group_metrics.update(_history_summary(group_history))
        results.update({f"group_{label}_{k}": v for k, v in group_metrics.items()})
    if not rows:
        raise DeeprecError(f"groups={cfg.groups}: no group has both training and test ratings")
    all_rows, all_predictions = np.concatenate(rows), np.concatenate(predictions)
    results.update(heldout_metrics(ratings, all_rows, all_predictions, prepared.data.scale))
    results["groups_trained"] = float(len(rows))
    train_u, train_i, train_r = index_pairs(prepared, split.train)
    users, items, _ = index_pairs(prepared, all_rows)
    m = prepared.data.matrices
    for kind in metrics.BASELINES:
        baseline = metrics.fit_baseline(kind, train_u, train_i, train_r, len(m.users), len(m.items))
        results[f"baseline_{kind}_rmse"] = metrics.rmse(ratings.values[all_rows], metrics.clip(baseline.predict(users, items), prepared.data.scale))
    results["seconds_per_epoch"] = float(np.median([h["seconds"] for h in history]))
    results["epochs_run"] = float(len(history))
    return Outcome(model, history, results)

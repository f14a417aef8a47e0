"""Metrics and baselines against hand-computed numbers (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from deeprec.errors import DeeprecError
from deeprec.metrics import (
    BASELINES,
    clip,
    evaluate_ratings,
    fit_baseline,
    mae,
    ranking_at_k,
    rmse,
    rmse_user_avg,
)

# ---------------------------------------------------------------------------------------------
# Rating metrics


def test_rmse_and_mae_hand_checked() -> None:
    # errors 2, 2: rmse = sqrt((4 + 4) / 2) = 2, mae = 2
    assert rmse([0, 1], [2, 3]) == 2.0
    assert mae([0, 1], [2, 3]) == 2.0
    # errors 0, 1, -3: rmse = sqrt((0 + 1 + 9) / 3) = sqrt(10/3), mae = (0 + 1 + 3) / 3 = 4/3
    assert rmse([1, 2, 3], [1, 3, 0]) == pytest.approx(math.sqrt(10 / 3))
    assert mae([1, 2, 3], [1, 3, 0]) == pytest.approx(4 / 3)


@pytest.mark.parametrize("metric", [rmse, mae])
def test_empty_input_is_a_clear_value_error(metric) -> None:
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="length"):
        rmse([1, 2], [1])


def test_rmse_user_avg_weighs_every_user_the_same() -> None:
    # user 0: four ratings, each off by 2 -> rmse 2; user 1: one rating, exact -> rmse 0.
    # per-user average = (2 + 0) / 2 = 1; the global per-rating rmse is sqrt(4*4 / 5) = sqrt(16/5).
    users = np.array([0, 0, 1, 0, 0])
    y_true = np.array([3, 3, 4, 1, 5])
    y_pred = np.array([5, 1, 4, 3, 3])
    assert rmse_user_avg(users, y_true, y_pred) == pytest.approx(1.0)
    assert rmse(y_true, y_pred) == pytest.approx(math.sqrt(16 / 5))
    with pytest.raises(ValueError, match="empty"):
        rmse_user_avg([], [], [])


def test_clip_to_scale() -> None:
    np.testing.assert_array_equal(clip(np.array([-1.0, 0.5, 3.2, 7.0]), (1, 5)), [1.0, 1.0, 3.2, 5.0])
    with pytest.raises(ValueError, match="low <= high"):
        clip(np.array([1.0]), (5, 1))


def test_evaluate_ratings_clips_first() -> None:
    # y_pred [6, 0.5, 3] clipped to (1, 5) -> [5, 1, 3]; errors vs [5, 1, 4] are 0, 0, -1:
    # rmse = sqrt(1/3), mae = 1/3; per user: user 0 rmse 0, user 1 rmse 1 -> average 0.5.
    out = evaluate_ratings(np.array([0, 0, 1]), np.array([5, 1, 4]), np.array([6, 0.5, 3]), scale=(1, 5))
    assert out == pytest.approx({"rmse": math.sqrt(1 / 3), "mae": 1 / 3, "rmse_user_avg": 0.5})


# ---------------------------------------------------------------------------------------------
# Baselines. Training ratings (user, item, rating) on 3x3 indices, with n_users = n_items = 4 so
# that user 3 and item 3 have no training rating:
#   (0,0,5) (0,1,3) (1,0,4) (1,2,2) (2,1,1) (2,2,3)      sum 18 / 6 -> global mean mu = 3
TRAIN_U = np.array([0, 0, 1, 1, 2, 2])
TRAIN_I = np.array([0, 1, 0, 2, 1, 2])
TRAIN_R = np.array([5, 3, 4, 2, 1, 3], dtype=float)


def fit(kind: str, **kwargs):
    return fit_baseline(kind, TRAIN_U, TRAIN_I, TRAIN_R, n_users=4, n_items=4, **kwargs)


def test_global_mean_baseline() -> None:
    np.testing.assert_allclose(fit("global_mean").predict(np.array([0, 2, -1]), np.array([1, 3, -1])), [3, 3, 3])


def test_user_mean_baseline_with_fallbacks() -> None:
    # user means: 0 -> (5+3)/2 = 4, 1 -> (4+2)/2 = 3, 2 -> (1+3)/2 = 2; user 3 (no ratings) and -1 -> mu = 3
    pred = fit("user_mean").predict(np.array([0, 1, 2, 3, -1]), np.array([0, 0, 3, 1, 2]))
    np.testing.assert_allclose(pred, [4, 3, 2, 3, 3])


def test_item_mean_baseline_with_fallbacks() -> None:
    # item means: 0 -> (5+4)/2 = 4.5, 1 -> (3+1)/2 = 2, 2 -> (2+3)/2 = 2.5; item 3 and -1 -> mu = 3
    pred = fit("item_mean").predict(np.array([3, 3, 0, 0, -1]), np.array([0, 1, 2, 3, -1]))
    np.testing.assert_allclose(pred, [4.5, 2, 2.5, 3, 3])


def test_user_item_bias_reg0_one_iteration() -> None:
    # b_u starts at 0. b_i = mean(r - mu) per item:
    #   i0: (2 + 1)/2 = 1.5   i1: (0 - 2)/2 = -1   i2: (-1 + 0)/2 = -0.5   i3: no ratings -> 0
    # b_u = mean(r - mu - b_i) per user:
    #   u0: (5-3-1.5) = 0.5, (3-3+1) = 1       -> 0.75
    #   u1: (4-3-1.5) = -0.5, (2-3+0.5) = -0.5 -> -0.5
    #   u2: (1-3+1) = -1, (3-3+0.5) = 0.5      -> -0.25
    b = fit("user_item_bias", reg=0.0, iterations=1)
    np.testing.assert_allclose(b.item_bias, [1.5, -1, -0.5, 0])
    np.testing.assert_allclose(b.user_bias, [0.75, -0.5, -0.25, 0])
    # (0,0): 3 + 0.75 + 1.5 = 5.25; (1,2): 3 - 0.5 - 0.5 = 2; (2,1): 3 - 0.25 - 1 = 1.75;
    # (3,0): user unseen in training -> b_u = 0 -> 4.5; (0,3): item without ratings -> 3.75; (-1,-1): 3
    pred = b.predict(np.array([0, 1, 2, 3, 0, -1]), np.array([0, 2, 1, 0, 3, -1]))
    np.testing.assert_allclose(pred, [5.25, 2, 1.75, 4.5, 3.75, 3])


def test_user_item_bias_reg0_two_iterations_alternates_items_first() -> None:
    # Round 2 starts from round 1's b_u = [0.75, -0.5, -0.25]. b_i = mean(r - mu - b_u):
    #   i0: (5-3-0.75) = 1.25, (4-3+0.5) = 1.5    -> 1.375
    #   i1: (3-3-0.75) = -0.75, (1-3+0.25) = -1.75 -> -1.25
    #   i2: (2-3+0.5) = -0.5, (3-3+0.25) = 0.25   -> -0.125
    # b_u = mean(r - mu - b_i):
    #   u0: (5-3-1.375) = 0.625, (3-3+1.25) = 1.25   -> 0.9375
    #   u1: (4-3-1.375) = -0.375, (2-3+0.125) = -0.875 -> -0.625
    #   u2: (1-3+1.25) = -0.75, (3-3+0.125) = 0.125  -> -0.3125
    b = fit("user_item_bias", reg=0.0, iterations=2)
    np.testing.assert_allclose(b.item_bias, [1.375, -1.25, -0.125, 0])
    np.testing.assert_allclose(b.user_bias, [0.9375, -0.625, -0.3125, 0])


def test_user_item_bias_regularized() -> None:
    # reg = 1, one iteration: b_i = sum(r - mu) / (1 + n_i):
    #   i0: 3/3 = 1   i1: -2/3   i2: -1/3
    # b_u = sum(r - mu - b_i) / (1 + n_u):
    #   u0: (5-3-1) + (3-3+2/3) = 5/3 -> 5/9
    #   u1: (4-3-1) + (2-3+1/3) = -2/3 -> -2/9
    #   u2: (1-3+2/3) + (3-3+1/3) = -1 -> -1/3
    b = fit("user_item_bias", reg=1.0, iterations=1)
    np.testing.assert_allclose(b.item_bias, [1, -2 / 3, -1 / 3, 0])
    np.testing.assert_allclose(b.user_bias, [5 / 9, -2 / 9, -1 / 3, 0])
    # (0,0): 3 + 5/9 + 1 = 41/9; (2,2): 3 - 1/3 - 1/3 = 7/3
    np.testing.assert_allclose(b.predict(np.array([0, 2]), np.array([0, 2])), [41 / 9, 7 / 3])


def test_unknown_baseline_names_the_choices() -> None:
    with pytest.raises(ValueError, match="user_item_bias") as info:
        fit("median")
    assert isinstance(info.value, DeeprecError)  # shown as one line by the CLI
    assert "global_mean" in str(info.value)


def test_baseline_rejects_out_of_range_indices() -> None:
    b = fit("global_mean")
    with pytest.raises(ValueError, match="out of range"):
        b.predict(np.array([4]), np.array([0]))
    with pytest.raises(ValueError, match="out of range"):
        b.predict(np.array([0]), np.array([-2]))
    with pytest.raises(ValueError, match="no ratings"):
        fit_baseline("global_mean", np.array([], dtype=int), np.array([], dtype=int), np.array([]), 2, 2)


@pytest.mark.parametrize("kind", BASELINES)
def test_every_baseline_predicts_the_mean_for_unseen(kind: str) -> None:
    assert fit(kind).predict(np.array([-1]), np.array([-1]))[0] == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------
# Ranking: 3 users x 6 items, k = 3, threshold 4.
#
# user 0: train {0}; test {1: 5, 3: 4, 5: 2} -> relevant {1, 3}
#   scores [0.99, 0.8, 0.9, 0.1, 0.7, 0.6]; item 0 (the highest) is in train -> excluded
#   ranking 2, 1, 4, 5, 3 -> top 3 = [2, 1, 4], hits [0, 1, 0]
#   precision 1/3, recall 1/2, DCG = 1/log2(3), IDCG (2 relevant) = 1 + 1/log2(3)
#   NDCG = (1/log2 3) / (1 + 1/log2 3) = 1 / (log2 3 + 1) = 1/log2(6) ~= 0.386853
#   (without the exclusion the top 3 would be [0, 2, 1], DCG = 1/log2(4) = 0.5: a different number)
# user 1: train {5}; test {0: 3, 2: 1} -> nothing >= 4 -> skipped
# user 2: train {1, 2}; test {0: 4, 4: 5, 5: 4} -> relevant {0, 4, 5}
#   scores [0.5, 0.95, 0.9, 0.4, 0.3, 0.2]; items 1, 2 excluded -> top 3 = [0, 3, 4], hits [1, 0, 1]
#   precision 2/3, recall 2/3, DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3) + 1/2
#   NDCG = 1.5 / (1.5 + 0.630930) ~= 0.703918
# averages over the 2 evaluated users: precision (1/3 + 2/3)/2 = 1/2, recall (1/2 + 2/3)/2 = 7/12,
# NDCG (0.386853 + 0.703918)/2 ~= 0.545385
SCORES = np.array([
    [0.99, 0.8, 0.9, 0.1, 0.7, 0.6],
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    [0.5, 0.95, 0.9, 0.4, 0.3, 0.2],
])
RANK_TRAIN = sp.csr_matrix(([5, 3, 4, 2], ([0, 1, 2, 2], [0, 5, 1, 2])), shape=(3, 6), dtype=np.float32)
RANK_TEST = sp.csr_matrix(([5, 4, 2, 3, 1, 4, 5, 4], ([0, 0, 0, 1, 1, 2, 2, 2], [1, 3, 5, 0, 2, 0, 4, 5])), shape=(3, 6), dtype=np.float32)
NDCG_U0 = 1 / math.log2(6)
NDCG_U2 = 1.5 / (1.5 + 1 / math.log2(3))


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_ranking_hand_checked(batch_size: int) -> None:
    asked: list[int] = []

    def score_rows(rows: np.ndarray) -> np.ndarray:
        asked.extend(rows.tolist())
        return SCORES[rows]

    before = SCORES.copy()
    out = ranking_at_k(score_rows, RANK_TRAIN, RANK_TEST, k=3, threshold=4.0, batch_size=batch_size)
    assert out == pytest.approx({
        "precision_at_3": 0.5,
        "recall_at_3": 7 / 12,
        "ndcg_at_3": (NDCG_U0 + NDCG_U2) / 2,
        "ranking_users": 2,
    })
    assert (NDCG_U0 + NDCG_U2) / 2 == pytest.approx(0.545385, abs=1e-6)
    assert sorted(asked) == [0, 2]  # user 1 (no relevant item) is never scored
    np.testing.assert_array_equal(SCORES, before)  # the caller's scores are not overwritten


def test_ranking_key_suffix_is_k_and_precision_divides_by_k() -> None:
    # k = 10 > 6 items: every candidate is in the top list, so every relevant item is a hit.
    # user 0: 2 hits -> precision 2/10, recall 1; user 2: 3 hits -> 3/10, recall 1. ndcg is 1 only if
    # the hits rank first, which they do not: user 0 ranks [2, 1, 4, 5, 3] -> hits at ranks 2 and 5:
    # DCG = 1/log2(3) + 1/log2(6), IDCG = 1 + 1/log2(3).
    # user 2 ranks [0, 3, 4, 5] -> hits at 1, 3, 4: DCG = 1 + 1/2 + 1/log2(5), IDCG = 1 + 1/log2(3) + 1/2.
    out = ranking_at_k(lambda rows: SCORES[rows], RANK_TRAIN, RANK_TEST, k=10)
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    ndcg2 = (1 + 0.5 + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    assert out == pytest.approx({
        "precision_at_10": 0.25,
        "recall_at_10": 1.0,
        "ndcg_at_10": (ndcg0 + ndcg2) / 2,
        "ranking_users": 2,
    })


def test_ranking_without_relevant_users_is_nan() -> None:
    out = ranking_at_k(lambda rows: SCORES[rows], RANK_TRAIN, RANK_TEST, k=3, threshold=6.0)
    assert out["ranking_users"] == 0
    assert math.isnan(out["ndcg_at_3"])


def test_ranking_checks_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        ranking_at_k(lambda rows: SCORES[rows], RANK_TRAIN, RANK_TEST[:, :5], k=3)
    with pytest.raises(ValueError, match="score_rows returned shape"):
        ranking_at_k(lambda rows: SCORES[rows, :5], RANK_TRAIN, RANK_TEST, k=3)


def test_relevance_is_the_top_quarter_of_the_rating_scale() -> None:
    """A fixed 4 made almost every rating of a 1..10 file relevant; MovieLens keeps its usual 4."""
    from deeprec.experiment import relevance_threshold

    assert relevance_threshold((1.0, 5.0)) == 4.0
    assert relevance_threshold((0.5, 5.0)) == 3.875  # ML-10M/20M half stars: 4, 4.5 and 5 are relevant
    assert relevance_threshold((1.0, 10.0)) == 7.75

"""The sparse training path (deeprec/sparse.py) computes what the dense path computes.

Same weights, same batch: the same loss and gradients; same seed and data: the same training
curve; and `fit` takes it exactly when the dense cache is off and the config allows it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from deeprec import sparse
from deeprec.config import TrainConfig
from deeprec.losses import masked_mse
from deeprec.matrix import build_matrices
from deeprec.ratings import Ratings
from deeprec.splits import holdout_split
from deeprec.train import TrainingData, build_model, fit, observed_errors, predict_rows


def tiny_ratings(n_users: int = 40, n_items: int = 25, seed: int = 0) -> Ratings:
    rng = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(n_users) for i in rng.choice(n_items, size=rng.integers(6, 14), replace=False)]
    users, items = np.array(pairs).T
    values = rng.integers(1, 6, size=len(users)).astype(np.float32)
    return Ratings(users.astype(np.int64), items.astype(np.int64), values, None, (1.0, 5.0), None)


@pytest.fixture(scope="module")
def ratings() -> Ratings:
    return tiny_ratings()


def streamed(ratings: Ratings, orientation: str, fill: str = "zero") -> TrainingData:
    matrices = build_matrices(ratings, holdout_split(ratings.users), orientation, fill, dense_cache=False)
    return TrainingData(matrices, ratings.scale)


@pytest.mark.parametrize(("orientation", "arch", "dropout"), [("user", "7", 0.0), ("item", "8,4,8", 0.0), ("user", "6,3,6", 0.5)])
def test_loss_and_gradients_match_the_dense_computation(ratings: Ratings, orientation: str, arch: str, dropout: float) -> None:
    data = streamed(ratings, orientation)
    cfg = TrainConfig(orientation=orientation, arch=arch, activation="selu", l2=0.01, dropout=dropout).validate()
    model = build_model(cfg, data)
    rows = np.array([0, 3, 5, 7, 11])
    batch = data.train.batch(rows)
    forward = sparse.SparseModel(model)
    positions, columns, values = sparse.RaggedRows(data.train.values).take(tf.constant(rows))

    def dense_loss():
        return masked_mse(tf.constant(batch.targets), model(batch.inputs, training=False), tf.constant(batch.mask)) + tf.add_n(model.losses)

    def sparse_loss():
        hidden = forward.hidden(positions, columns, values, tf.constant(len(rows), tf.int64), training=False)
        return tf.reduce_mean(tf.square(values - forward.at(hidden, positions, columns))) + tf.add_n(model.losses)

    losses, grads = [], []
    for loss_fn in (dense_loss, sparse_loss):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        losses.append(float(loss))
        grads.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_weights)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for dense_grad, sparse_grad in zip(*grads):
        np.testing.assert_allclose(sparse_grad, dense_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("orientation", "chunk", "arch", "l2", "last_activation"),
    [
        ("user", 1 << 17, "6", 1e-4, "identity"),
        ("item", 1 << 17, "6", 1e-4, "identity"),
        ("item", 7, "6", 1e-4, "elu"),
        ("user", 5, "6,4,6", 0.05, "selu"),
    ],
)
def test_fit_on_sparse_rows_follows_the_dense_training_curve(
    ratings: Ratings, orientation: str, chunk: int, arch: str, l2: float, last_activation: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chunk 7 or 5: every batch's output in many chunks; l2 0.05: the penalty's gradient (added
    # by hand on the sparse path) weighs in every layer's update; elu and selu outputs: the
    # output layer's gradient goes through its activation before the CSR products
    monkeypatch.setattr(sparse, "STEP_CHUNK_RATINGS", chunk)
    cfg = TrainConfig(orientation=orientation, arch=arch, l2=l2, last_activation=last_activation, epochs=4, batch_size=8, patience=0, lr=0.01).validate()
    split = holdout_split(ratings.users)
    cached = TrainingData(build_matrices(ratings, split, orientation, "zero", dense_cache=True), ratings.scale)
    with caplog.at_level("INFO", logger="deeprec.train"):
        _, dense_history = fit(cfg, cached)
    assert "sparse rows" not in caplog.text
    data = streamed(ratings, orientation)
    with caplog.at_level("INFO", logger="deeprec.train"):
        model, sparse_history = fit(cfg, data)
    assert "training on sparse rows" in caplog.text
    for dense, sparse_ in zip(dense_history, sparse_history):
        for key in ("train_loss", "train_rmse", "valid_rmse"):
            assert sparse_[key] == pytest.approx(dense[key], rel=1e-3), (key, dense["epoch"])
    assert sparse_history[-1]["train_rmse"] < sparse_history[0]["train_rmse"]  # it learns
    # The returned model holds the best epoch's weights, the output kernel included (the step
    # trains a transposed copy of it): evaluated densely, it gives that epoch's validation RMSE.
    best = min(h["valid_rmse"] for h in sparse_history)
    valid = {"valid_rmse": data.matrices.valid}
    assert observed_errors(lambda r: predict_rows(model, data, r), valid, data.train.shape[0], data.scale)["valid_rmse"] == pytest.approx(best, rel=1e-5)


def test_sparse_evaluation_equals_the_dense_one(ratings: Ratings) -> None:
    data = streamed(ratings, "user")
    model = build_model(TrainConfig(orientation="user", arch="5").validate(), data)
    targets = {"train_rmse": data.train.values, "valid_rmse": data.matrices.valid}
    n_rows = data.train.shape[0]
    expected = observed_errors(lambda r: predict_rows(model, data, r), targets, n_rows, data.scale)
    for block_rows, block_ratings in ((7, 1 << 18), (1000, 25), (1000, 1)):
        got = sparse.SparseEvaluator(model, sparse.RaggedRows(data.train.values), targets, data.scale, block_rows, block_ratings)(n_rows)
        assert got == pytest.approx(expected, rel=1e-5)


def test_evaluation_blocks_bound_rows_and_ratings() -> None:
    per_row = np.array([5, 1, 1, 9, 0, 2, 2, 2])
    blocks = sparse._blocks(per_row, max_rows=3, max_ratings=6)
    assert blocks == [(0, 2), (2, 3), (3, 4), (4, 7), (7, 8)]  # a 9-rating row is a block of its own
    assert [b for pair in blocks for b in pair][0] == 0 and blocks[-1][1] == len(per_row)
    assert sparse._blocks(np.zeros(0, np.int64), 3, 6) == []


@pytest.mark.parametrize(
    ("overrides", "supported"),
    [({}, True), ({"noise": "mask", "noise_level": 0.2}, True), ({"noise": "dropout", "noise_level": 0.2}, True),
     ({"fill": "row-mean"}, False), ({"loss": "row"}, False), ({"fill": "3"}, False), ({"noise": "gaussian", "noise_level": 0.1}, False),
     ({"refeed": 1}, False), ({"tied": True}, False), ({"precision": "bfloat16"}, False)],
)
def test_supports_only_what_it_computes_exactly(overrides: dict, supported: bool) -> None:
    cfg = TrainConfig(**overrides).validate()
    assert sparse.supports(cfg, cfg.fill, has_side=False) is supported
    assert not sparse.supports(cfg, cfg.fill, has_side=True)
    assert not sparse.supports(cfg, "row-mean", has_side=False)  # the matrix's fill decides


def test_a_non_zero_fill_streams_dense_batches(ratings: Ratings, caplog: pytest.LogCaptureFixture) -> None:
    cfg = TrainConfig(orientation="user", arch="4", fill="row-mean", epochs=2, batch_size=8, patience=0).validate()
    with caplog.at_level("INFO", logger="deeprec.train"):
        _, history = fit(cfg, streamed(ratings, "user", fill="row-mean"))
    assert "sparse rows" not in caplog.text and len(history) == 2


def test_input_noise_trains_on_sparse_rows(ratings: Ratings) -> None:
    for noise in ("dropout", "mask"):
        cfg = TrainConfig(orientation="item", arch="6", noise=noise, noise_level=0.3, epochs=3, batch_size=8, patience=0, lr=0.01).validate()
        _, history = fit(cfg, streamed(ratings, "item"))
        assert all(np.isfinite(h["train_loss"]) for h in history) and history[-1]["train_rmse"] < history[0]["train_rmse"]


def test_take_rows_matches_the_ragged_gather_with_empty_and_skewed_rows() -> None:
    # a long row among short ones (the mask tf.repeat would build is rows x longest), empty rows
    # inside and at the ends, rows asked for out of order and twice
    lengths = [0, 3, 0, 0, 40, 1, 0, 2, 0]
    rng = np.random.default_rng(3)
    values = tf.RaggedTensor.from_row_lengths(rng.uniform(1, 5, sum(lengths)).astype(np.float32), lengths)
    columns = tf.RaggedTensor.from_row_lengths(rng.integers(0, 100, sum(lengths)), lengths)
    for rows in ([4, 1, 7], [0, 2, 3], [8, 5, 4, 4, 0, 1], list(range(len(lengths))), []):
        rows = tf.constant(rows, tf.int64)
        positions, cols, vals = sparse.take_rows(values, columns, rows)
        expected = tf.gather(values, rows)
        np.testing.assert_array_equal(positions.numpy(), expected.value_rowids().numpy())
        np.testing.assert_array_equal(cols.numpy(), tf.gather(columns, rows).flat_values.numpy())
        np.testing.assert_array_equal(vals.numpy(), expected.flat_values.numpy())
    assert positions.dtype == tf.int64 and positions.shape == (0,)

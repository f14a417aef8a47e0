"""The sparse training path (deeprec/sparse.py) computes what the dense path computes.

Same weights, same batch: the same loss and gradients; same seed and data: the same training
curve; and `fit` takes it exactly when the dense cache is off and the config allows it.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeprec import sparse
from deeprec.config import ConfigError, TrainConfig
from deeprec.losses import masked_mse
from deeprec.matrix import build_matrices
from deeprec.ratings import Ratings
from deeprec.splits import holdout_split
from deeprec.optimizers import make_optimizer
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


SUPPORTED_CONFIGS = [
    ({}, True), ({"noise": "mask", "noise_level": 0.2}, True), ({"noise": "dropout", "noise_level": 0.2}, True),
    ({"fill": "row-mean"}, False), ({"loss": "row"}, False), ({"fill": "3"}, False), ({"noise": "gaussian", "noise_level": 0.1}, False),
    ({"refeed": 1}, False), ({"tied": True}, False), ({"precision": "bfloat16"}, False),
]


@pytest.mark.parametrize(("overrides", "supported"), SUPPORTED_CONFIGS)
def test_supports_only_what_it_computes_exactly(overrides: dict, supported: bool) -> None:
    cfg = TrainConfig(**overrides).validate()
    assert sparse.supports(cfg, cfg.fill, has_side=False) is supported
    assert not sparse.supports(cfg, cfg.fill, has_side=True)
    assert not sparse.supports(cfg, "row-mean", has_side=False)  # the matrix's fill decides


@pytest.mark.parametrize(("overrides", "supported"), [*SUPPORTED_CONFIGS, ({"side_info": "item"}, False)])
def test_lazy_adam_takes_exactly_the_configs_of_the_sparse_path(overrides: dict, supported: bool) -> None:
    if supported:
        TrainConfig(**overrides, optimizer="lazy_adam").validate()
    else:
        with pytest.raises(ConfigError, match=r"^optimizer: lazy_adam trains on sparse rows.*got " + next(iter(overrides))):
            TrainConfig(**overrides, optimizer="lazy_adam").validate()


def test_lazy_adam_trains_like_adam_when_every_batch_has_every_column(ratings: Ratings, caplog: pytest.LogCaptureFixture) -> None:
    # Batches of 64 rows hold all 40 users (25 items): every column is in every batch, so the lazy
    # update is Adam's, input noise, penalties and the deep model's middle layers included. The
    # lazy run starts from a dense cache: it trains on the sparse rows all the same.
    split = holdout_split(ratings.users)
    models = {}
    for optimizer in ("adam", "lazy_adam"):
        cfg = TrainConfig(orientation="user", arch="6,4,6", l2=1e-3, noise="mask", noise_level=0.2, epochs=5, batch_size=64, patience=0, lr=0.05, optimizer=optimizer)
        data = streamed(ratings, "user") if optimizer == "adam" else TrainingData(build_matrices(ratings, split, "user", "zero", dense_cache=True), ratings.scale)
        with caplog.at_level("INFO", logger="deeprec.train"):
            models[optimizer], history = fit(cfg.validate(), data)
        assert "training on sparse rows" in caplog.text
        caplog.clear()
    assert history[-1]["train_rmse"] < history[0]["train_rmse"] - 0.1  # it learns
    for adam_weight, lazy_weight in zip(models["adam"].get_weights(), models["lazy_adam"].get_weights()):
        np.testing.assert_allclose(lazy_weight, adam_weight, atol=1e-5)


def test_a_lazy_step_leaves_the_columns_outside_its_batch_alone(ratings: Ratings) -> None:
    # One user's row holds 6-13 of the 25 items: the lazy step updates those items' rows of the
    # first kernel, output kernel (its transposed copy) and output bias, with their moments, and
    # reads nothing else; Adam's penalty and moments move every row.
    data = streamed(ratings, "user")
    rows = tf.constant([3, 17], tf.int64)
    in_batch = np.unique(data.train.values[[3, 17]].indices)
    outside = np.setdiff1d(np.arange(data.train.shape[1]), in_batch)
    assert len(outside) > 0
    after = {}
    for optimizer in ("adam", "lazy_adam"):
        cfg = TrainConfig(orientation="user", arch="6", l2=0.01, lr=0.01, optimizer=optimizer).validate()
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg, data)
        stepper = sparse.SparseStepper(cfg, model, sparse.RaggedRows(data.train.values), make_optimizer(cfg))
        column_weights = [stepper.sparse.first.kernel, stepper.output_kernel_t, stepper.sparse.output.bias]
        before = [w.numpy().copy() for w in column_weights]
        for _ in range(2):  # the second step: the moments of the first one carry Adam's rows on
            loss = stepper.step(rows)
        assert np.isfinite(float(loss))
        after[optimizer] = [(w.numpy(), b) for w, b in zip(column_weights, before)]
        moments = [stepper.optimizer._momentums[stepper.optimizer._get_variable_index(w)].numpy() for w in column_weights]
        if optimizer == "lazy_adam":
            for moment in moments:
                assert not moment[outside].any() and moment[in_batch].any()
    for (lazy, start), (adam, _), penalised in zip(after["lazy_adam"], after["adam"], (True, True, False)):
        np.testing.assert_array_equal(lazy[outside], start[outside])
        assert np.abs(lazy[in_batch] - start[in_batch]).max() > 1e-3
        if penalised:  # the bias has no penalty: its gradient outside the batch is 0 under Adam too
            assert np.abs(adam[outside] - start[outside]).max() > 1e-4


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

"""Models and training on tiny generated data: every registry combination, learning, loss values."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import synthetic_ratings, write_ml1m
from deeprec import preparation
from deeprec.config import TrainConfig
from deeprec.losses import masked_mse, masked_row_mse
from deeprec.matrix import NAMED_FILLS, build_matrices
from deeprec.models import MODELS, untie
from deeprec.ratings import Ratings
from deeprec.splits import holdout_split
from deeprec import train
from deeprec.train import BestWeights, TrainingData, TrainingDiverged, cpu_has_native_bfloat16, fit, observed_errors, predict_rows


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory) -> dict[str, preparation.Prepared]:
    """ML-1M-format files with 30 users x 20 items, prepared once per orientation and fill."""
    folder = tmp_path_factory.mktemp("data")
    write_ml1m(folder / "ml-1m", synthetic_ratings(n_users=30, n_items=20, per_user=(10, 16), seed=1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPREC_DATA_DIR", str(folder))
        return {
            (orientation, fill, side): preparation.prepare(TrainConfig(orientation=orientation, fill=fill, side_info=side).validate())
            for orientation, side in (("user", "none"), ("user", "user"), ("item", "item"))
            for fill in ("zero", "3", *NAMED_FILLS[1:])
        }


COMBINATIONS = [
    (model, fill, noise, side, tied, refeed)
    for model, fill, noise, (side, tied), refeed in itertools.product(
        MODELS, ("zero", "3", *NAMED_FILLS[1:]), ("none", "gaussian", "dropout", "mask"), (("none", False), ("none", True), ("user", False)), (0, 1)
    )
]


@pytest.fixture
def eager():
    """Run the training step eagerly: tracing a graph per combination would dominate the test time
    (the compiled path is exercised by every other test here)."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.parametrize(("model", "fill", "noise", "side", "tied", "refeed"), COMBINATIONS)
def test_every_combination_trains_an_epoch(eager, tiny_prepared, model: str, fill: str, noise: str, side: str, tied: bool, refeed: int) -> None:
    cfg = TrainConfig(
        model=model, orientation="user", arch="6" if tied else "6,4,6", fill=fill, noise=noise, noise_level=0.2 if noise != "none" else 0.0,
        side_info=side, tied=tied, refeed=refeed, dropout=0.2, epochs=1, batch_size=8, patience=0,
    ).validate()
    prepared = tiny_prepared[("user", fill, side)]
    trained, history = fit(cfg, prepared.data)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["valid_rmse"])
    n_rows, n_cols = prepared.data.train.shape
    assert trained.input_shape[-1] == n_cols + (30 if side == "user" else 0)  # side info is concatenated to the input
    assert trained.output_shape[-1] == n_cols  # outputs are ratings only
    plain = untie(trained, cfg)
    rows = np.arange(3)
    np.testing.assert_allclose(predict_rows(plain, prepared.data, rows), predict_rows(trained, prepared.data, rows), rtol=1e-5, atol=1e-5)
    assert all(type(layer).__module__.startswith("keras") for layer in plain.layers)  # reloads without custom objects


def test_a_tied_bfloat16_model_exports_the_predictions_it_was_evaluated_on(tiny_prepared) -> None:
    """`untie` built the plain copy in float32: its predictions differed by up to 4e-3."""
    cfg = TrainConfig(orientation="user", arch="6", tied=True, precision="bfloat16", epochs=1, batch_size=8, patience=0).validate()
    prepared = tiny_prepared[("user", "zero", "none")]
    trained, _ = fit(cfg, prepared.data)
    plain = untie(trained, cfg)
    policies = {layer.name: layer.dtype_policy.name for layer in plain.layers if layer.weights}
    assert policies == {layer.name: layer.dtype_policy.name for layer in trained.layers if layer.weights} and "mixed_bfloat16" in policies.values()
    rows = np.arange(5)
    np.testing.assert_array_equal(predict_rows(plain, prepared.data, rows), predict_rows(trained, prepared.data, rows))


def test_item_orientation_with_item_side_information(tiny_prepared) -> None:
    cfg = TrainConfig(orientation="item", side_info="item", arch="5", epochs=2, batch_size=4, patience=0).validate()
    prepared = tiny_prepared[("item", "zero", "item")]
    trained, history = fit(cfg, prepared.data)
    assert [h["epoch"] for h in history] == [1, 2]
    assert trained.input_shape[-1] == prepared.data.train.shape[1] + 19  # 18 genres + release year


def test_masked_mse_against_hand_computed_values() -> None:
    targets = tf.constant([[5.0, 0.0], [3.0, 4.0]])
    predictions = tf.constant([[4.0, 9.0], [3.0, 2.0]])
    mask = tf.constant([[1.0, 0.0], [1.0, 1.0]])
    # observed errors 1, 0, -2 -> (1 + 0 + 4) / 3; the unobserved 9 vs 0 does not count
    assert float(masked_mse(targets, predictions, mask)) == pytest.approx(5 / 3)
    assert float(masked_mse(targets, predictions, tf.zeros_like(mask))) == 0.0
    # its gradient is 2·(prediction - target)/3 at the observed entries and 0 elsewhere
    with tf.GradientTape() as tape:
        tape.watch(predictions)
        loss = masked_mse(targets, predictions, mask)
    np.testing.assert_allclose(tape.gradient(loss, predictions).numpy(), [[-2 / 3, 0.0], [0.0, -4 / 3]], rtol=1e-6)


def test_row_averaged_loss_weighs_every_row_the_same() -> None:
    targets = tf.constant([[5.0, 0.0, 0.0], [3.0, 4.0, 1.0], [0.0, 0.0, 0.0]])
    predictions = tf.constant([[4.0, 9.0, 9.0], [3.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    mask = tf.constant([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # row 1: error 1 -> 1; row 2: errors 0, -2, 1 -> 5/3; row 3 has no rating and is left out
    assert float(masked_row_mse(targets, predictions, mask)) == pytest.approx((1 + 5 / 3) / 2)
    # per rating the heavy row dominates: (1 + 0 + 4 + 1) / 4
    assert float(masked_mse(targets, predictions, mask)) == pytest.approx(6 / 4)
    assert float(masked_row_mse(targets, predictions, tf.zeros_like(mask))) == 0.0


def test_every_loss_name_of_the_config_has_a_loss() -> None:
    from deeprec.config import LOSS_AVERAGES
    from deeprec.losses import LOSSES

    assert set(LOSS_AVERAGES) == set(LOSSES)


def test_row_loss_trains_differently_from_the_rating_loss(tmp_path: Path, monkeypatch) -> None:
    """Same seed, same batches: only the averaging differs, and with rows of 3 to 19 ratings
    the row average moves the model elsewhere than the rating average."""
    write_ml1m(tmp_path / "ml-1m", synthetic_ratings(n_users=40, n_items=20, per_user=(3, 20), seed=2))
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path))
    base = TrainConfig(orientation="user", arch="6", epochs=5, batch_size=8, patience=0, lr=0.02).validate()
    prepared = preparation.prepare(base)
    _, by_rating = fit(base, prepared.data)
    _, by_row = fit(base.replace(loss="row"), prepared.data)
    assert by_row[0]["train_loss"] != pytest.approx(by_rating[0]["train_loss"], rel=1e-3)
    assert abs(by_row[-1]["valid_rmse"] - by_rating[-1]["valid_rmse"]) > 1e-4
    assert all(math.isfinite(h["valid_rmse"]) for h in by_row)


def test_non_zero_fill_does_not_leak_into_the_loss(tmp_path: Path) -> None:
    """With fill 3 the inputs differ, but loss and targets only see observed ratings."""
    rows = synthetic_ratings(n_users=12, n_items=10, per_user=(10, 11), seed=4)
    ratings = Ratings(rows[:, 0], rows[:, 1], rows[:, 2].astype(np.float32), None, (1, 5), tmp_path)
    split = holdout_split(ratings.users)
    zero = build_matrices(ratings, split, fill="zero").train.batch(np.arange(4))
    three = build_matrices(ratings, split, fill="3").train.batch(np.arange(4))
    assert not np.array_equal(zero.inputs, three.inputs)
    guess = tf.fill(zero.targets.shape, 3.5)
    assert float(masked_mse(three.targets, guess, three.mask)) == pytest.approx(float(masked_mse(zero.targets, guess, zero.mask)))
    expected = np.sum(zero.mask * (zero.targets - 3.5) ** 2) / zero.mask.sum()
    assert float(masked_mse(three.targets, guess, three.mask)) == pytest.approx(expected, rel=1e-6)


def test_observed_errors_are_global_per_rating_and_clipped() -> None:
    import scipy.sparse as sp

    targets = sp.csr_matrix(np.array([[5.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=np.float32))
    predictions = np.array([[7.0, 0.0, 1.5], [0.0, 3.0, 0.0]], dtype=np.float32)
    # clipped to 1..5: errors 0 (7 -> 5), 0.5, 1 over 3 ratings -> sqrt(1.25 / 3)
    errors = observed_errors(lambda rows: predictions[rows], {"x": targets}, 2, (1, 5))
    assert errors["x"] == pytest.approx(math.sqrt(1.25 / 3))


def test_learns_a_low_rank_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 120, 60
    truth = np.clip(3 + 1.2 * rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items)) / 1.5, 1, 5)
    observed = rng.random((n_users, n_items)) < 0.5
    u, i = np.nonzero(observed)
    ratings = Ratings(u + 1, i + 1, truth[u, i].astype(np.float32), None, (1, 5), tmp_path)
    split = holdout_split(ratings.users, seed=1)
    data = TrainingData(build_matrices(ratings, split, orientation="user"), (1, 5))
    cfg = TrainConfig(orientation="user", arch="32", activation="sigmoid", l2=1e-5, lr=0.01, epochs=150, batch_size=32, patience=20).validate()
    _, history = fit(cfg, data)
    valid = [h["valid_rmse"] for h in history]
    mean = ratings.values[split.train].mean()
    mean_rmse = float(np.sqrt(np.mean((ratings.values[split.valid] - mean) ** 2)))
    assert min(valid) < 0.6 * mean_rmse, (min(valid), mean_rmse)


def test_nan_loss_is_reported(tiny_prepared) -> None:
    cfg = TrainConfig(orientation="user", arch="6", activation="relu", optimizer="sgd", lr=1e12, epochs=5, batch_size=8, patience=0).validate()
    with pytest.raises(TrainingDiverged, match="training loss became"):
        fit(cfg, tiny_prepared[("user", "zero", "none")].data)


def test_early_stopping_restores_the_best_weights(tiny_prepared) -> None:
    data = tiny_prepared[("user", "zero", "none")].data
    cfg = TrainConfig(orientation="user", arch="8", lr=0.05, epochs=40, batch_size=8, patience=3).validate()
    model, history = fit(cfg, data)
    valid = [h["valid_rmse"] for h in history]
    best = int(np.argmin(valid))
    assert len(history) <= best + 1 + 3  # stopped within `patience` epochs of the best
    final = observed_errors(lambda r: predict_rows(model, data, r), {"valid_rmse": data.matrices.valid}, data.train.shape[0], data.scale)
    assert final["valid_rmse"] == pytest.approx(valid[best], rel=1e-5)


def test_large_models_keep_their_best_weights_on_disk(tiny_prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every model counts as large: the best epoch's weights go to a temporary folder block by
    # block, come back at the end, and the folder is removed.
    monkeypatch.setattr(BestWeights, "SPILL_BYTES", 0)
    monkeypatch.setattr(BestWeights, "BLOCK_BYTES", 64)  # several blocks per kernel and bias
    folders: list[str] = []
    original_save = BestWeights.save

    def save(self: BestWeights) -> None:
        original_save(self)
        assert self.copy is None and self.folder is not None and len(os.listdir(self.folder.name)) == len(self.model.weights)
        folders.append(self.folder.name)

    monkeypatch.setattr(BestWeights, "save", save)
    data = tiny_prepared[("user", "zero", "none")].data
    cfg = TrainConfig(orientation="user", arch="8", lr=0.05, epochs=40, batch_size=8, patience=3).validate()
    model, history = fit(cfg, data)
    valid = [h["valid_rmse"] for h in history]
    final = observed_errors(lambda r: predict_rows(model, data, r), {"valid_rmse": data.matrices.valid}, data.train.shape[0], data.scale)
    assert int(np.argmin(valid)) < len(valid) - 1  # it did train past its best epoch
    assert final["valid_rmse"] == pytest.approx(min(valid), rel=1e-5)
    assert folders and not any(os.path.exists(folder) for folder in folders)


def test_a_fit_stopped_by_an_error_leaves_no_spilled_weights(tiny_prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pruned trial (optuna.TrialPruned from on_epoch), a diverged run or a Ctrl-C end the fit
    # without restoring the best weights: their folder must go all the same.
    monkeypatch.setattr(BestWeights, "SPILL_BYTES", 0)
    saved: list[tuple[BestWeights, str]] = []  # holding the object: only an explicit cleanup removes its folder
    original_save = BestWeights.save

    def save(self: BestWeights) -> None:
        original_save(self)
        saved.append((self, self.folder.name))

    def stop_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise RuntimeError("pruned")

    monkeypatch.setattr(BestWeights, "save", save)
    cfg = TrainConfig(orientation="user", arch="8", lr=0.05, epochs=10, batch_size=8, patience=0).validate()
    with pytest.raises(RuntimeError, match="pruned"):
        fit(cfg, tiny_prepared[("user", "zero", "none")].data, on_epoch=stop_after_two)
    assert saved and not any(os.path.exists(folder) for _, folder in saved)


@pytest.mark.parametrize("tied", [False, True])
def test_the_step_adds_kerass_l2_penalty_and_its_gradient(tiny_prepared, tied: bool) -> None:
    """The training step adds the L2 penalties by hand (models.l2_penalties); one SGD step must move
    every weight as differentiating Keras's own `model.losses` would, and report the same loss."""
    from deeprec.losses import LOSSES
    from deeprec.train import _Stepper, build_model

    data = tiny_prepared[("user", "zero", "none")].data
    cfg = TrainConfig(orientation="user", arch="6" if tied else "6,4,6", tied=tied, dropout=0.0, l2=0.05, l2_decoder=None if tied else 0.2, optimizer="sgd", lr=0.5, batch_size=8, seed=3).validate()
    model = build_model(cfg, data)
    x, y, m = (tf.constant(a[:8]) for a in data.train.dense_arrays)
    with tf.GradientTape() as tape:
        expected_loss = LOSSES[cfg.loss](y, model(x, training=True), m) + tf.add_n(model.losses)
    expected_grads = tape.gradient(expected_loss, model.trainable_weights)
    before = [w.numpy() for w in model.trainable_weights]
    assert float(tf.add_n(model.losses)) > 0.01  # the penalty is not negligible here
    loss = tf.function(_Stepper(cfg, model, data)._step)(x, y, m, tf.range(8))  # compiled, as it trains
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for weight, start, grad in zip(model.trainable_weights, before, expected_grads):
        np.testing.assert_allclose(weight.numpy(), start - 0.5 * grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("side", "block_rows"), [("none", 8192), ("user", 8192), ("none", 7), ("user", 16)])
def test_the_cached_evaluation_equals_the_numpy_one(tiny_prepared, side: str, block_rows: int) -> None:
    from deeprec.train import EvaluationBlocks, _Stepper, build_model

    data = tiny_prepared[("user", "3", side)].data
    cfg = TrainConfig(orientation="user", arch="6", fill="3", side_info=side).validate()
    model = build_model(cfg, data)
    targets = {"train_rmse": data.train.values, "valid_rmse": data.matrices.valid}
    expected = observed_errors(lambda r: predict_rows(model, data, r), targets, data.train.shape[0], data.scale)
    stepper = _Stepper(cfg, model, data)
    blocks = EvaluationBlocks(targets, block_rows)
    assert len(blocks.blocks) == -(-data.train.shape[0] // block_rows)  # one block, or several
    got = stepper.cached_errors(blocks, data.scale)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-6)
        assert 0.1 < got[name] < 4.0


ALLOCATOR_PROBE = """
import os, deeprec, tensorflow as tf
tf.ones([256, 256])
try:
    statistics = tf.config.experimental.get_memory_info("CPU:0")["peak"] > 0
except ValueError:  # an allocator that keeps no statistics
    statistics = False
print(os.environ["TF_CPU_ALLOCATOR_USE_BFC"], statistics)
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, "true"), ("false", "false")])
def test_importing_deeprec_selects_tensorflows_bfc_cpu_allocator(preset, expected) -> None:
    """The BFC allocator unless the user chose otherwise. With it TensorFlow keeps CPU memory
    statistics; with `false`, whether it does depends on the CPU (on the AMD hosts TensorFlow's
    default allocator kept none, on an Intel one it did), so only the setting is checked then."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if preset is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = preset
    probe = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    setting, statistics = probe.stdout.split()[-2:]
    assert setting == expected
    if preset is None:
        assert statistics == "True"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n", True),  # AVX-512 BF16
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),  # AMX
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n", False),  # AVX2 only
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),
        ("processor\t: 0\nvendor_id\t: Unknown\n", None),  # no flags line
    ],
)
def test_cpu_bfloat16_flags(tmp_path, cpuinfo, native) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bfloat16(str(path)) is native
    assert cpu_has_native_bfloat16(str(tmp_path / "missing")) is None


def test_bfloat16_on_an_emulating_cpu_warns_once(tiny_prepared, monkeypatch, caplog) -> None:
    data = tiny_prepared[("user", "zero", "none")].data
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: False)
    train.warn_if_bfloat16_is_emulated.cache_clear()
    cfg = TrainConfig(orientation="user", arch="8", precision="bfloat16", epochs=1).validate()
    with caplog.at_level("WARNING", logger="deeprec.train"):
        train.build_model(cfg, data)
        train.build_model(cfg, data)
        train.build_model(cfg.replace(precision="float32"), data)
    warnings = [r.getMessage() for r in caplog.records if "without bfloat16 instructions" in r.getMessage()]
    assert len(warnings) == 1 and "avx512_bf16" in warnings[0]
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: True)
    train.warn_if_bfloat16_is_emulated.cache_clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="deeprec.train"):
        train.build_model(cfg, data)
    assert not caplog.records
    train.warn_if_bfloat16_is_emulated.cache_clear()


def test_bfloat16_training_follows_float32(tiny_prepared) -> None:
    """Mixed bfloat16 (float32 weights and Adam state, bfloat16 compute) learns like float32."""
    data = tiny_prepared[("user", "zero", "none")].data
    histories = {}
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(orientation="user", arch="8", precision=precision, lr=0.01, epochs=15, batch_size=8, patience=0).validate()
        model, histories[precision] = fit(cfg, data)
        assert all(w.dtype == "float32" for w in model.trainable_weights)
    ours, reference = histories["bfloat16"], histories["float32"]
    assert ours[-1]["train_rmse"] < 0.9 * ours[0]["train_rmse"]  # it learns
    assert ours[-1]["train_rmse"] == pytest.approx(reference[-1]["train_rmse"], rel=0.05)

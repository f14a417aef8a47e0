import keras
import numpy as np
import pytest
import tensorflow as tf

from deeprec.config import TrainConfig
from deeprec.optimizers import FusedAdam, make_optimizer


def _train(optimizer: keras.optimizers.Optimizer, gradients: list[list[object]], start: list[np.ndarray]) -> list[np.ndarray]:
    weights = [keras.Variable(w.copy()) for w in start]
    step = tf.function(lambda grads: optimizer.apply(grads, weights))
    for grads in gradients:
        step(grads)
    return [w.numpy() for w in weights]


@pytest.mark.parametrize("learning_rate", [1e-3, keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=3, decay_rate=0.5)])
def test_fused_adam_follows_keras_adam_step_for_step(learning_rate):
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    gradients = [[tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in start] for _ in range(12)]
    fused = _train(FusedAdam(learning_rate=learning_rate), gradients, start)
    keras_adam = _train(keras.optimizers.Adam(learning_rate=learning_rate), gradients, start)
    for ours, theirs, initial in zip(fused, keras_adam, start):
        assert np.abs(ours - initial).max() > 1e-3  # the weights moved
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fused_adam_gives_sparse_gradients_to_keras_adam():
    start = [np.ones((4, 2), np.float32)]
    slices = [[tf.IndexedSlices(tf.ones((1, 2)), tf.constant([row]), tf.constant([4, 2]))] for row in (0, 1)]
    fused = _train(FusedAdam(learning_rate=0.1), slices, start)
    keras_adam = _train(keras.optimizers.Adam(learning_rate=0.1), slices, start)
    np.testing.assert_allclose(fused[0], keras_adam[0], rtol=1e-6)
    # Keras 3's Adam is dense even for sparse gradients: row 0 keeps moving on its momentum at step 2.
    assert fused[0][0, 0] < 0.9 - 1e-3 and fused[0][2, 0] == 1.0


def test_make_optimizer_names():
    assert isinstance(make_optimizer(TrainConfig(optimizer="adam", lr=0.01).validate()), FusedAdam)
    momentum = make_optimizer(TrainConfig(optimizer="momentum", lr=0.01, momentum=0.9).validate())
    assert isinstance(momentum, keras.optimizers.SGD) and momentum.momentum == 0.9
    assert isinstance(make_optimizer(TrainConfig(optimizer="rmsprop").validate()), keras.optimizers.RMSprop)

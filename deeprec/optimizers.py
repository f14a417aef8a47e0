"""make_optimizer(cfg): the Keras optimizer a config names.

Adam is Keras's own (`keras.optimizers.Adam`: its state, schedules, clipping and serialization),
with one change in how a dense float32 update is computed: TensorFlow's fused `ResourceApplyAdam`
kernel does the whole update of a weight in one op, where Keras 3 composes it from about ten
element-wise ops, each a full pass over the weight and its two moments. The formula is the same
(TensorFlow's kernel is the one tf.keras 2 used), so the result differs only by float rounding
(tests/test_optimizers.py). The update is memory-bound: at the ML-10M shape it was 38% of the
sparse path's training step, and about 6% of the deep model's epoch on ML-1M.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeprec.config import TrainConfig


class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose dense float32 updates run TensorFlow's fused Adam kernel.

    Sparse (IndexedSlices) gradients, AMSGrad and other dtypes take Keras's own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad or variable.dtype != "float32":
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, tf.float32)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(m),
            v=_handle(v),
            beta1_power=tf.pow(tf.constant(self.beta_1, tf.float32), step),
            beta2_power=tf.pow(tf.constant(self.beta_2, tf.float32), step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=tf.constant(self.beta_1, tf.float32),
            beta2=tf.constant(self.beta_2, tf.float32),
            epsilon=tf.constant(self.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32),
        )


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras variable or of the tf.Variable inside it."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return FusedAdam(learning_rate=cfg.lr)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr)
    if cfg.optimizer == "momentum":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    return keras.optimizers.RMSprop(learning_rate=cfg.lr)

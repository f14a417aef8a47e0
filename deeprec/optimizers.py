"""make_optimizer(cfg): the Keras optimizer a config names.

Adam is Keras's own (`keras.optimizers.Adam`: its state, schedules, clipping and serialization),
with one change in how a dense float32 update is computed: TensorFlow's fused `ResourceApplyAdam`
kernel does the whole update of a weight in one op, where Keras 3 composes it from about ten
element-wise ops, each a full pass over the weight and its two moments. The formula is the same
(TensorFlow's kernel is the one tf.keras 2 used), so the result differs only by float rounding
(tests/test_optimizers.py). The update is memory-bound: at the ML-10M shape it was 38% of the
sparse path's training step, and about 6% of the deep model's epoch on ML-1M.

`lazy_adam` is Adam that updates only the rows a sparse gradient names (TensorFlow 1's
`LazyAdamOptimizer`, TF Addons' `LazyAdam`): the sparse training path gives it the kernel rows of
the columns a batch has ratings in, and every other row keeps its weights and moments until a
batch reaches it. Each step's work then grows with the batch's columns instead of all columns.
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


class LazyAdam(FusedAdam):
    """Adam that applies a sparse (IndexedSlices) gradient to its rows only: their moments and
    weights are updated as Adam would, with the bias correction of the global step; other rows,
    moments included, stay as they are. Dense gradients take `FusedAdam`'s update, so a row that
    every batch reaches trains exactly as under Adam.

    Keras 3's Adam, given a sparse gradient, still decays every row's moments and moves every row
    (tests/test_optimizers.py), a full pass over the weight and both moments per step.
    The indices must be unique (the sparse path takes them from `tf.unique`).
    """

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad or variable.dtype != "float32":
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, tf.float32)
        # The step size of ResourceApplyAdam: lr·sqrt(1 - β2^t) / (1 - β1^t), ε outside the root.
        alpha = tf.cast(learning_rate, tf.float32) * tf.sqrt(1.0 - tf.pow(self.beta_2, step)) / (1.0 - tf.pow(self.beta_1, step))
        rows, grad = gradient.indices, tf.cast(gradient.values, tf.float32)
        m_rows = self.beta_1 * tf.gather(m, rows) + (1.0 - self.beta_1) * grad
        v_rows = self.beta_2 * tf.gather(v, rows) + (1.0 - self.beta_2) * tf.square(grad)
        tf.raw_ops.ResourceScatterUpdate(resource=_handle(m), indices=rows, updates=m_rows)
        tf.raw_ops.ResourceScatterUpdate(resource=_handle(v), indices=rows, updates=v_rows)
        tf.raw_ops.ResourceScatterSub(resource=_handle(variable), indices=rows, updates=alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon))


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras variable or of the tf.Variable inside it."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return FusedAdam(learning_rate=cfg.lr)
    if cfg.optimizer == "lazy_adam":
        return LazyAdam(learning_rate=cfg.lr)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr)
    if cfg.optimizer == "momentum":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    return keras.optimizers.RMSprop(learning_rate=cfg.lr)

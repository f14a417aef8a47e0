"""Custom Keras layers used while training. Exported models never contain them (see models.untie)."""

from __future__ import annotations

import keras
from keras import layers


class DenseTransposed(layers.Layer):
    """A decoder layer whose kernel is another Dense layer's kernel transposed (tied weights).

    Used only while training; `untie()` exports the same function with plain Dense layers, so a
    saved model reloads without custom objects.
    """

    def __init__(self, source: layers.Dense, activation: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.activation = keras.activations.get(activation)

    def build(self, input_shape) -> None:
        self.bias = self.add_weight(name="bias", shape=(self.source.kernel.shape[0],), initializer="zeros")

    def call(self, inputs):
        kernel = keras.ops.cast(keras.ops.transpose(self.source.kernel), self.compute_dtype)
        return self.activation(keras.ops.matmul(inputs, kernel) + keras.ops.cast(self.bias, self.compute_dtype))
